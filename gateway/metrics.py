"""The gateway's Prometheus metrics (prometheus-client), one registry per app instance.

Hot-path cost matters (every request, and the streaming loop): labelled children are cached in
dicts, gauges that mirror state (in-flight, queue depth, engine signals) are computed at scrape
time with ``set_function`` instead of being updated per request, and nothing is recorded per
chunk except what the relay loop already counts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from gateway.errors import OpenAIError
from gateway.health import STATES

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
CLIENT_CLOSED = 499  # nginx's status for "client went away": recorded in metrics only

# The ``reason`` label of ``gateway_rejections`` for an error code (default: validation for a
# 4xx, else the code itself).
_REASONS = {
    "queue_full": "queue_full",
    "wait_timeout": "wait_timeout",
    "per_key_limit": "per_key_limit",
    "engine_down": "engine_down",
    "warming_up": "warming",
    "warmup_failed": "warming",
    "invalid_api_key": "auth",
    "invalid_internal_token": "auth",
}


def rejection_reason(err: OpenAIError) -> str:
    reason = _REASONS.get(err.code or "")
    if reason:
        return reason
    return "validation" if 400 <= err.status < 500 else (err.code or "upstream")


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_start_time_seconds (uptime), CPU, memory, fds
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "gateway_rejections",
            "Requests refused by the gateway, by reason (queue_full, wait_timeout, "
            "per_key_limit, engine_down, warming, validation, auth, ...)",
            ["reason"],
            registry=r,
        )
        self.disconnects = Counter(
            "gateway_client_disconnects",
            "Clients gone before the answer ended, by phase (request: while sending the body; "
            "queued; upstream: waiting for or streaming the engine's answer)",
            ["phase"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream failures, by kind", ["kind"], registry=r
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds", "Time admitted requests spent queued",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "gateway_ttft_seconds", "Time to the first streamed byte, measured at the edge",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Total request latency at the edge",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens_streamed = Counter(
            "gateway_streamed_tokens",
            "Completion tokens streamed to clients (from the usage chunk, else SSE events)",
            registry=r,
        )
        self.token_counts = Counter(
            "gateway_prompt_token_counts",
            "Prompt token counts, by outcome (counted: the engine's /tokenize ran; skipped: the "
            "prompt's byte-size bound proved it short, or it was token ids)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.warmup_state = Enum(
            "gateway_warmup_state", "Serving state of the current engine instance",
            states=list(STATES), registry=r,
        )  # fmt: skip
        self._gauges: dict[str, Gauge] = {}
        self._req_children: dict[tuple[str, int], Counter] = {}
        self._rej_children: dict[str, Counter] = {}

    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A gauge read at scrape time from live state."""
        g = Gauge(name, doc, registry=self.registry)
        g.set_function(fn)
        self._gauges[name] = g

    def request(self, route: str, status: int) -> None:
        child = self._req_children.get((route, status))
        if child is None:
            child = self._req_children[(route, status)] = self.requests.labels(route, str(status))
        child.inc()

    def reject(self, reason: str) -> None:
        child = self._rej_children.get(reason)
        if child is None:
            child = self._rej_children[reason] = self.rejections.labels(reason)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
