"""One line per request, for people (``text``) or log pipelines (``json``): request id, the
caller's key label, route, status, prompt and completion tokens, queue wait, TTFT, duration.

Written once the answer is complete, from what the route and the service recorded on the
``Call``; never per chunk. ``GATEWAY_LOG_FORMAT=off`` turns it off.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

log = logging.getLogger("gateway.access")

Format = Literal["json", "text", "off"]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class AccessLog:
    def __init__(self, format: Format) -> None:
        self.format = format

    def emit(
        self,
        *,
        request_id: bytes,
        key: str | None,
        route: str,
        status: int,
        duration_s: float,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        queue_wait_s: float | None = None,
        ttft_s: float | None = None,
    ) -> None:
        if self.format == "off" or not log.isEnabledFor(logging.INFO):
            return
        record = {
            "ts": round(time.time(), 3),
            "request_id": request_id.decode("latin-1"),
            "key": key,
            "route": route,
            "status": status,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "queue_wait_ms": _ms(queue_wait_s),
            "ttft_ms": _ms(ttft_s),
            "duration_ms": _ms(duration_s),
        }
        if self.format == "json":
            log.info(json.dumps(record, separators=(",", ":")))
        else:
            log.info(" ".join(f"{k}={v}" for k, v in record.items() if v is not None))


def configure(format: Format) -> None:
    """Access lines go to stderr as bare lines (a JSON object each for ``json``), not through
    the application log's ``time level name:`` prefix."""
    if format == "off":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
