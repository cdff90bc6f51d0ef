"""One generation request: what the route hands the service (``Call``, read only), and what the
service learns while serving it (``Progress``, written by the service alone).

The route authenticates (the caller is a ``Tenant``, not a label to look up again), reads the
body and builds the ``Call``; it never writes to it. The service (with its resumer, a part of
it) records timings, counts and the replica that answered on ``call.progress``; the route reads
that for the access log once the service has returned, tenancy and the ledger get the usage the
service worked out, as arguments. Apart from the service so that the readers (routes, access
log) depend on the request's shape, not on the service that serves it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.apis import Kind
from gateway.resume import Resumable
from gateway.routing.base import Request as RouteRequest
from gateway.tenancy.tenants import Tenant
from gateway.tracing import NOOP_TRACE, RequestTrace


@dataclass(frozen=True)
class Timeouts:
    stream_idle_s: float  # a stream's silence between two reads
    request_s: float  # a non-streaming answer
    queue_keepalive_s: float  # SSE comment interval while a stream queues (0: never)


class Progress:
    """Where a request is and what the service learned of it: one writer, the service."""

    __slots__ = (
        "completion_tokens", "phase", "prompt_tokens", "queue_wait_s", "replica", "resume",
        "route", "strip_usage", "trace", "ttft_s", "usage_tail",
    )  # fmt: skip

    def __init__(self) -> None:
        self.phase: str | None = None  # None (preparing), "queued", "upstream"
        self.prompt_tokens: int | None = None  # the count, then the engine's usage
        self.completion_tokens: int | None = None
        self.queue_wait_s: float | None = None
        self.ttft_s: float | None = None
        self.replica: str | None = None  # the replica that answered (or failed last)
        # The service's working state for this request.
        self.route = RouteRequest()  # the request as routing sees it (gateway/routing)
        self.strip_usage = False  # the usage chunk is the gateway's, not the client's
        self.usage_tail = b""  # where the engine's usage is (token accounting)
        self.resume: Resumable | None = None  # a resumable stream's state (gateway/resume/)
        self.trace: RequestTrace = NOOP_TRACE  # its spans (gateway/tracing/; free when off)


@dataclass(frozen=True, slots=True)
class Call:
    """One generation request as the route hands it over."""

    kind: Kind
    path: str
    body: bytes
    tenant: Tenant  # who asks (``auth.Access.authenticate``): its label, limits and class
    request_id: bytes
    started_at: float = field(default_factory=time.perf_counter)  # at arrival (for TTFT)
    forward: bytes = b""  # header lines passed to the engine as sent (trace context)
    http10: bool = False  # an HTTP/1.0 client cannot read a chunked (streamed) answer
    progress: Progress = field(default_factory=Progress)
