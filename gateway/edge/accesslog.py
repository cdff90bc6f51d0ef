"""One line per request, for people (``text``) or log pipelines (``json``): request id, the
caller's key label, route, status, prompt and completion tokens, queue wait, TTFT, duration, the
replica that answered and, for a stream continued on another replica, the ones it left
(``resumed_from``, ``gateway/resume/``).

Written once the answer is complete, from what the route and the service recorded on the
``Call``; never per chunk. Measured (`make bench-gateway`, 256 streams): through ``logging``
with ``json.dumps`` and a flush per line it cost ~15% of the gateway's CPU, so lines are built
with one f-string (the request id is already restricted to ``[A-Za-z0-9._:-]``, the route is a
constant; only the key label is JSON-escaped), buffered, and written to stderr at most every
``FLUSH_S`` (and at shutdown). ``GATEWAY_LOG_FORMAT=off`` turns it off.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, Literal

Format = Literal["json", "text", "off"]
FLUSH_S = 0.1


def _num(value: float | None, scale: float = 1.0) -> str:
    return "null" if value is None else f"{value * scale:.1f}"


def _int(value: int | None) -> str:
    return "null" if value is None else str(value)


class AccessLog:
    def __init__(self, format: Format, stream: IO[str] | None = None) -> None:
        self.format = format
        self.stream = stream  # None: sys.stderr at write time (tests capture it)
        self._lines: list[str] = []
        self._flush: asyncio.TimerHandle | None = None

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
        replica: str | None = None,
        resumed_from: str | None = None,
    ) -> None:
        if self.format == "off":
            return
        rid = request_id.decode("latin-1")
        if self.format == "json":
            line = (
                f'{{"ts":{time.time():.3f},"request_id":"{rid}",'
                f'"key":{json.dumps(key)},"route":"{route}","status":{status},'
                f'"prompt_tokens":{_int(prompt_tokens)},'
                f'"completion_tokens":{_int(completion_tokens)},'
                f'"queue_wait_ms":{_num(queue_wait_s, 1000)},"ttft_ms":{_num(ttft_s, 1000)},'
                f'"duration_ms":{_num(duration_s, 1000)},"replica":{json.dumps(replica)},'
                f'"resumed_from":{"null" if resumed_from is None else json.dumps(resumed_from)}}}\n'
            )
        else:
            fields = {"request_id": rid, "key": key, "route": route, "status": status,
                      "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "queue_wait_ms": _num(queue_wait_s, 1000), "ttft_ms": _num(ttft_s, 1000),
                      "duration_ms": _num(duration_s, 1000), "replica": replica,
                      "resumed_from": resumed_from}  # fmt: skip
            line = " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, "null"))
            line += "\n"
        self._lines.append(line)
        if self._flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush = loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        self._flush = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        stream = self.stream or sys.stderr
        stream.write("".join(lines))
        stream.flush()
