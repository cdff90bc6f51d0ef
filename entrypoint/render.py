"""Render a profile into the exact ``vllm serve`` argv and environment.

Rendering is pure (no process is started, nothing is written), so ``python -m entrypoint render``
shows operators precisely what ``serve`` will run, and the tests feed the argv to vLLM's own
argument parser.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from entrypoint import replica as replicas
from entrypoint.cache import CacheLayout
from env import kvevents
from env.settings import CacheSettings, EngineEnv, EngineSettings

_SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY", re.IGNORECASE)


@dataclass(frozen=True)
class Rendered:
    """The command and the environment additions ``serve`` will exec with."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def masked_env(self) -> dict[str, str]:
        """The environment with secret-looking values replaced, for printing and logs."""
        return {
            k: ("***" if _SECRET.search(k) and "PATH" not in k else v) for k, v in self.env.items()
        }

    def shell(self) -> str:
        """A copy-pasteable shell rendering (environment masked)."""
        env = " \\\n  ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.masked_env().items()))
        lines: list[str] = []
        for arg in self.argv:
            if (
                lines
                and not arg.startswith("--")
                and lines[-1].startswith("--")
                and " " not in lines[-1]
            ):
                lines[-1] += " " + shlex.quote(arg)
            else:
                lines.append(shlex.quote(arg))
        cmd = " \\\n    ".join(lines)
        return f"env \\\n  {env} \\\n  {cmd}" if env else cmd


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


QUIET_ENDPOINTS = "/health,/metrics"


def engine_args(engine: EngineSettings, replica: int = 0) -> list[str]:
    """``vllm serve`` arguments for the engine slice, in a stable order. Unset options are left
    to vLLM's own defaults rather than repeated here."""
    args: list[str] = [
        engine.model,
        "--host", engine.host,
        "--port", str(engine.port),
        "--served-model-name", engine.served_model_name,
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
    ]  # fmt: skip
    optional: list[tuple[str, object]] = [
        ("--max-num-batched-tokens", engine.max_num_batched_tokens),
        ("--gpu-memory-utilization", engine.gpu_memory_utilization),
        ("--dtype", engine.dtype),
        ("--kv-cache-dtype", engine.kv_cache_dtype),
        ("--block-size", engine.block_size),
        ("--tool-call-parser", engine.tool_call_parser),
        ("--reasoning-parser", engine.reasoning_parser),
        ("--safetensors-load-strategy", engine.safetensors_load_strategy),
        # vLLM 0.32 ObservabilityConfig (vllm/engine/arg_utils.py): the engine's spans, children
        # of the caller's traceparent (the gateway's upstream-attempt span).
        ("--otlp-traces-endpoint", engine.otlp_traces_endpoint or None),
    ]
    for flag, value in optional:
        if value is not None:
            args += [flag, str(value)]
    json_options: list[tuple[str, object]] = [
        ("--limit-mm-per-prompt", engine.limit_mm_per_prompt),
        ("--speculative-config", engine.speculative_config),
        ("--additional-config", engine.additional_config),
    ]
    for flag, value in json_options:
        if value is not None:
            args += [flag, _json(value)]
    if engine.enable_prefix_caching is not None:
        args.append(
            "--enable-prefix-caching"
            if engine.enable_prefix_caching
            else "--no-enable-prefix-caching"
        )
    if engine.async_scheduling is not None:
        args.append("--async-scheduling" if engine.async_scheduling else "--no-async-scheduling")
    if engine.enable_auto_tool_choice:
        args.append("--enable-auto-tool-choice")
    if engine.disable_chunked_mm_input:
        args.append("--disable-chunked-mm-input")
    if engine.enforce_eager:
        args.append("--enforce-eager")
    if engine.shutdown_timeout_s > 0:
        # vLLM 0.32 (vllm/engine/arg_utils.py, vllm/v1/engine/core.py): on SIGTERM the engine
        # core stops admitting and drains in-flight requests for up to this many seconds, then
        # aborts what is left; 0 (vLLM's default, so not rendered) aborts them at once.
        args += ["--shutdown-timeout", str(engine.shutdown_timeout_s)]
    # The gateway polls /metrics four times a second and /health once: without this the
    # engine's access log is mostly those polls (vLLM's own filter, vllm/entrypoints/launchers/
    # cli_args.py; the engine's other requests are still logged).
    args += ["--disable-access-log-for-endpoints", QUIET_ENDPOINTS]
    if engine.kv_events == "on":  # env/kvevents.py: the addresses derive from the port
        args += kvevents.publisher_flag(
            engine.host, engine.port, engine.kv_events_port_offset, replica
        )
    args += shlex.split(engine.extra_args)
    return args


def engine_environ(
    engine: EngineSettings, runtime: EngineEnv, cache: CacheSettings
) -> dict[str, str]:
    """Environment the engine needs on top of the inherited one: the profile's third-party
    variables plus cache locations derived from the cache key (never typed by hand)."""
    env = runtime.as_environ()
    layout = CacheLayout.for_settings(engine, cache)
    env["HF_HOME"] = str(cache.hf_dir)
    env["VLLM_CACHE_ROOT"] = str(layout.hot / "vllm")
    if engine.platform == "tpu":
        # tpu-inference maps VLLM_XLA_CACHE_PATH onto jax_compilation_cache_dir; upstream CI also
        # sets JAX_COMPILATION_CACHE_DIR to the same directory
        # (tpu_inference/runner/compilation_manager.py).
        env["VLLM_XLA_CACHE_PATH"] = str(layout.hot / "xla")
        env["JAX_COMPILATION_CACHE_DIR"] = str(layout.hot / "xla")
    if engine.hf_token_file is not None:
        # huggingface_hub reads the token from this file: the token itself never enters argv,
        # the environment or a log line.
        env["HF_TOKEN_PATH"] = str(engine.hf_token_file)
    return env


def render(
    engine: EngineSettings,
    runtime: EngineEnv,
    cache: CacheSettings,
    vllm: str = "vllm",
    replica: int = 0,
) -> Rendered:
    """The full command of replica ``replica`` of the profile: ``<vllm> serve <args>`` plus its
    environment (its port, its hot compile-cache dir and, on TPU, its chips; entrypoint/replica.py).

    ``engine`` and ``cache`` are the profile's own settings; the replica's are derived here.
    Raises ``replica.ReplicaError`` for an index outside ``ENGINE_REPLICAS``."""
    mine, mine_cache = replicas.for_replica(engine, cache, replica)
    env = engine_environ(mine, runtime, mine_cache)
    env.update(replicas.tpu_environ(engine, replica))
    env.update(replicas.cpu_environ(engine, runtime.vllm_cpu_omp_threads_bind, replica))
    return Rendered(argv=[vllm, "serve", *engine_args(mine, replica)], env=env)


def model_path(engine: EngineSettings) -> Path | None:
    """The model as a local directory, or None when it is a hub id."""
    path = Path(engine.model)
    return path if path.is_dir() else None
