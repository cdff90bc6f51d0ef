"""Benchmarks for the serving stack.

``python -m bench sweep``   the concurrency x context sweep (issue 6), against any
                            OpenAI-compatible URL: the gateway or an engine directly.
``python -m bench compare`` deltas between two sweeps (the historical performance matrix).
``python -m bench gateway`` the gateway-overhead benchmark (issue 7): the same load through the
                            gateway and directly against its upstream, alternating.
``python -m bench vllm-check`` one cell measured by us and by ``vllm bench serve``, side by side.

Metric definitions follow ``vllm bench serve`` exactly (see ``bench.metrics``).
"""
