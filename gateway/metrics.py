"""The gateway's Prometheus metrics (prometheus-client), one registry per app instance.

Hot-path cost matters (every request, and the streaming loop): labelled children are cached in
dicts, gauges that mirror state (in-flight, queue depth, engine signals) are computed at scrape
time with ``set_function`` instead of being updated per request, and nothing is recorded per
chunk except what the relay loop already counts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.errors import OpenAIError
from gateway.replicas.health import STATES

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
    "draining": "draining",
    "invalid_api_key": "auth",
    "invalid_internal_token": "auth",
    "rpm_limit": "rpm_limit",
    "tpm_limit": "tpm_limit",
    "request_exceeds_tpm": "tpm_limit",
    "model_not_allowed": "model_not_allowed",
    "max_tokens_limit": "max_tokens_limit",
}


def rejection_reason(err: OpenAIError) -> str:
    reason = _REASONS.get(err.code or "")
    if reason:
        return reason
    return "validation" if 400 <= err.status < 500 else (err.code or "upstream")


class ReplicaStats(NamedTuple):
    """One replica's series at scrape time (labelled by its ``host:port`` name)."""

    name: str
    state: str
    draining: bool
    inflight: int
    served: int
    waiting: float
    running: float
    kv_usage: float
    metrics_age_s: float


class _ReplicaCollector:
    """Per-replica series, computed at scrape time: the replica set changes at run time (DNS),
    so series of a replica that left disappear instead of lingering as stale gauges."""

    def __init__(self, view: Callable[[], list[ReplicaStats]]) -> None:
        self.view = view

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self.view()
        state = GaugeMetricFamily(
            "gateway_replica_state", "1 for each replica's current serving state",
            labels=["replica", "state"],
        )  # fmt: skip
        draining = GaugeMetricFamily("gateway_replica_draining", "1 while a replica drains",
                                     labels=["replica"])  # fmt: skip
        inflight = GaugeMetricFamily("gateway_replica_inflight", "Requests on a replica now",
                                     labels=["replica"])  # fmt: skip
        served = CounterMetricFamily("gateway_replica_requests", "Requests sent to a replica",
                                     labels=["replica"])  # fmt: skip
        waiting = GaugeMetricFamily("gateway_replica_engine_waiting",
                                    "Replica engine's waiting requests (last sample)",
                                    labels=["replica"])  # fmt: skip
        running = GaugeMetricFamily("gateway_replica_engine_running",
                                    "Replica engine's running requests (last sample)",
                                    labels=["replica"])  # fmt: skip
        kv = GaugeMetricFamily("gateway_replica_engine_kv_usage",
                               "Replica engine's KV cache usage 0-1 (last sample)",
                               labels=["replica"])  # fmt: skip
        age = GaugeMetricFamily("gateway_replica_engine_metrics_age_seconds",
                                "Age of a replica's last engine metrics sample",
                                labels=["replica"])  # fmt: skip
        for r in stats:
            for st in STATES:
                if st != "draining":
                    state.add_metric([r.name, st], 1.0 if r.state == st else 0.0)
            draining.add_metric([r.name], float(r.draining))
            inflight.add_metric([r.name], r.inflight)
            served.add_metric([r.name], r.served)
            waiting.add_metric([r.name], r.waiting)
            running.add_metric([r.name], r.running)
            kv.add_metric([r.name], r.kv_usage)
            age.add_metric([r.name], r.metrics_age_s)
        yield from (state, draining, inflight, served, waiting, running, kv, age)


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
        self.stream_resumes = Counter(
            "gateway_stream_resumes",
            "Resumable streams broken after the first byte, by outcome (resumed: another "
            "replica finished it; finished: the generation had ended, the gateway closed it; "
            "no_replica; exhausted: GATEWAY_RESUME_MAX spent; not_resumable; refused)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.token_counts = Counter(
            "gateway_prompt_token_counts",
            "Prompt token counts, by outcome (counted: the engine's /tokenize ran; skipped: the "
            "prompt's byte-size bound proved it short, or it was token ids)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.warmup_state = Enum(
            "gateway_warmup_state",
            "The gateway's serving state (ready while GATEWAY_MIN_READY_REPLICAS replicas are)",
            states=list(STATES), registry=r,
        )  # fmt: skip
        # Per API key (the keys file's labels only: bounded cardinality).
        self.key_requests = Counter(
            "gateway_key_requests", "Requests admitted upstream, by key label and class",
            ["key", "class"], registry=r,
        )  # fmt: skip
        self.key_token_counts = Counter(
            "gateway_key_tokens",
            "Tokens settled per key (prompt, completion; cached: the part of prompt the engine "
            "served from its prefix cache)",
            ["key", "kind"], registry=r,
        )  # fmt: skip
        self.key_rejections = Counter(
            "gateway_key_rejections", "Requests of a key refused, by reason", ["key", "reason"],
            registry=r,
        )  # fmt: skip
        self.key_queue_wait = Histogram(
            "gateway_key_queue_wait_seconds", "Time admitted requests spent queued, by key",
            ["key"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._key_counters: dict[tuple[str, ...], Counter] = {}
        self._key_waits: dict[str, Histogram] = {}
        self._gauges: dict[str, Gauge] = {}
        self._req_children: dict[tuple[str, int], Counter] = {}
        self._rej_children: dict[str, Counter] = {}
        # GATEWAY_WORKERS > 1 (gateway/workers/metrics.py): this worker's page in, every
        # worker's page out, so that one scrape reports the whole host.
        self.gather: Callable[[bytes], Awaitable[bytes]] | None = None

    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A gauge read at scrape time from live state."""
        g = Gauge(name, doc, registry=self.registry)
        g.set_function(fn)
        self._gauges[name] = g

    def replica_collector(self, view: Callable[[], list[ReplicaStats]]) -> None:
        """The per-replica series, read from ``view`` at each scrape."""
        self.registry.register(_ReplicaCollector(view))  # type: ignore[arg-type]

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

    def _counter(self, metric: Counter, *labels: str) -> Counter:
        key = (metric._name, *labels)
        child = self._key_counters.get(key)
        if child is None:
            child = self._key_counters[key] = metric.labels(*labels)
        return child

    def key_admitted(self, key: str, klass: str, queued_s: float) -> None:
        self._counter(self.key_requests, key, klass).inc()
        wait = self._key_waits.get(key)
        if wait is None:
            wait = self._key_waits[key] = self.key_queue_wait.labels(key)
        wait.observe(queued_s)

    def key_tokens(self, key: str, kind: str, n: int) -> None:
        self._counter(self.key_token_counts, key, kind).inc(n)

    def key_reject(self, key: str, reason: str) -> None:
        self._counter(self.key_rejections, key, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
