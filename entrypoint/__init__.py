"""Engine launcher: profile -> preflight -> compile cache -> `vllm serve` in its own process group."""
