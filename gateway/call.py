"""One generation request: what the route hands the service, and what the service learns of it
(timings, counts, the replica that answered) for the access log, tenancy and the ledger.

Apart from the service so that the readers (routes, access log, tenancy) depend on the request's
shape, not on the service that serves it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.apis import Kind
from gateway.resume import Resumable
from gateway.routing.base import Request as RouteRequest
from gateway.tracing import NOOP_TRACE, RequestTrace


@dataclass(frozen=True)
class Timeouts:
    stream_idle_s: float  # a stream's silence between two reads
    request_s: float  # a non-streaming answer
    queue_keepalive_s: float  # SSE comment interval while a stream queues (0: never)


class Call:
    """One generation request as the route hands it over; ``phase`` tells where it is now."""

    __slots__ = (
        "body", "caller", "completion_tokens", "forward", "http10", "kind", "path", "phase",
        "prompt_tokens", "queue_wait_s", "replica", "request_id", "resume", "route",
        "started_at", "strip_usage", "trace", "ttft_s", "usage_tail",
    )  # fmt: skip

    def __init__(
        self,
        kind: Kind,
        path: str,
        body: bytes,
        caller: str,
        request_id: bytes,
        started_at: float | None = None,
        forward: bytes = b"",
        http10: bool = False,
    ) -> None:
        self.kind: Kind = kind
        self.path = path
        self.body = body
        self.caller = caller
        self.request_id = request_id
        self.started_at = time.perf_counter() if started_at is None else started_at  # for TTFT
        self.forward = forward  # header lines passed to the engine as sent (trace context)
        self.http10 = http10  # an HTTP/1.0 client cannot read a chunked (streamed) answer
        self.phase: str | None = None  # None (preparing), "queued", "upstream"
        # What the service learned, for the access log.
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.queue_wait_s: float | None = None
        self.ttft_s: float | None = None
        self.route = RouteRequest()  # the request as routing sees it (gateway/routing)
        self.replica: str | None = None  # the replica that answered (or failed last)
        self.strip_usage = False  # the usage chunk is the gateway's, not the client's
        self.usage_tail = b""  # where the engine's usage is (token accounting)
        self.resume: Resumable | None = None  # a resumable stream's state (gateway/resume/)
        self.trace: RequestTrace = NOOP_TRACE  # its spans (gateway/tracing/; free when off)
