"""Which engine process is answering: the identity that warm-up results are keyed by.

A warm-up proves one engine *process* can serve; a restarted engine (crash, OOM, redeploy) is a
new process with cold compile caches and must be warmed again before it gets traffic. vLLM's API
server exports ``process_start_time_seconds`` in ``/metrics``; a restart changes it, so it is a
cheap identity. Pure functions only: the warm-up sidecar imports this module
without pulling in the gateway's web stack.
"""

from __future__ import annotations

from protocol.prometheus import values

_START_METRIC = "process_start_time_seconds"


def engine_instance(metrics_text: str) -> str | None:
    """The engine instance id from a Prometheus text page, or None if the page lacks it.

    The value is normalised (``repr(float)``) so that ``1.79e+09`` and ``1790000000.0`` agree.
    """
    found = values(metrics_text, _START_METRIC)
    return repr(found[0]) if found else None
