"""Every part of a running gateway, built whole and torn down as one ``async with``.

``running(config)`` is the lifespan: it builds the replica set (each replica's clients and
monitor), starts it, yields a ``Components`` whose every field is live (nothing ``None`` until
startup, no ``assert`` in the routes), and on exit stops the monitors and closes the clients in
reverse order, whatever happened in between. ``GatewayConfig`` is what is known before startup
(settings, keys, token, the upstreams); it is built, and refuses bad configuration, without an
event loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from env.replicas import Upstream
from env.settings import EngineSettings, GatewaySettings
from gateway.accesslog import AccessLog
from gateway.admission import Admission
from gateway.auth import Access, KeysWatcher
from gateway.headroom import KeyShares
from gateway.health import Snapshot
from gateway.metrics import GatewayMetrics
from gateway.policy import Policy
from gateway.ratelimit import MemoryStore
from gateway.replicas import ReplicaOptions, ReplicaSet, build_upstreams
from gateway.routing import build_scheduler
from gateway.saturation import SaturationPolicy
from gateway.service import CompletionService, Timeouts
from gateway.tenancy import Tenancy
from gateway.tokens import TokenCounter

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway knows before it starts: settings, who may call it, its upstream."""

    engine: EngineSettings
    settings: GatewaySettings
    access: Access
    upstreams: list[Upstream]  # the fixed replicas (empty with a DNS upstream)
    dns: tuple[str, str, int] | None = None  # GATEWAY_UPSTREAM_DNS: (scheme, host, port)

    @classmethod
    def build(cls, engine: EngineSettings, settings: GatewaySettings, access: Access) -> Self:
        """Raises ``env.replicas.UpstreamError`` (one line per problem) for bad upstreams."""
        upstreams, dns = build_upstreams(engine, settings)
        return cls(engine, settings, access, upstreams, dns)

    @property
    def upstream_url(self) -> str:
        """The first replica's URL (or the DNS URL): for the start-up line and the tests."""
        if self.dns is not None:
            scheme, host, port = self.dns
            return f"{scheme}://{host}:{port}"
        return self.upstreams[0].url

    @property
    def max_inflight(self) -> int:
        """The in-flight cap of one replica (admission's is the sum over routable ones)."""
        return self.settings.max_inflight or self.engine.max_num_seqs


@dataclass(frozen=True)
class Components:
    """The live parts the routes are built from."""

    config: GatewayConfig
    policy: Policy
    access: Access
    replicas: ReplicaSet
    admission: Admission
    metrics: GatewayMetrics
    completions: CompletionService
    access_log: AccessLog


@asynccontextmanager
async def running(config: GatewayConfig) -> AsyncIterator[Components]:
    s = config.settings
    policy = Policy.from_settings(config.engine, s)
    metrics = GatewayMetrics()
    admission = Admission(
        config.max_inflight,
        s.queue_depth,
        s.queue_timeout_s,
        s.per_key_concurrency,
        s.max_retry_after_s,
        fair=s.scheduling == "fair",
        shares=KeyShares(tenants=lambda: config.access.keys.tenants),
    )
    tenancy = Tenancy(config.access.keys, MemoryStore(), metrics, s.tpm_cached_tokens)
    async with AsyncExitStack() as stack:
        access_log = AccessLog(s.log_format)
        stack.callback(access_log.flush)  # the last lines, after everything else stopped
        replicas = ReplicaSet(
            config.upstreams,
            ReplicaOptions(
                config.max_inflight,
                s.connect_timeout_s,
                SaturationPolicy(
                    s.engine_waiting_threshold, s.kv_usage_threshold, s.metrics_max_age_s
                ),
                s.metrics_poll_s,
                s.health_poll_s,
                s.warmup_status_port,
            ),
            admission,
            build_scheduler(s.routing),
            s.min_ready_replicas,
            config.dns,
            s.dns_refresh_s,
        )
        completions = CompletionService(
            policy=policy,
            upstreams=replicas,
            tokens=TokenCounter(replicas.control, s.tokenize_timeout_s),
            admission=admission,
            metrics=metrics,
            timeouts=Timeouts(s.stream_idle_timeout_s, s.request_timeout_s, s.queue_keepalive_s),
            tenancy=tenancy,
        )
        if s.api_keys_file is not None and not config.access.keys.open:
            keys_watcher = KeysWatcher(config.access.keys, Path(s.api_keys_file), s.keys_reload_s)
            keys_watcher.start()
            stack.push_async_callback(keys_watcher.stop)
        _register_gauges(metrics, admission, replicas)
        replicas.subscribe(lambda snap: _on_health(metrics, snap))
        stack.push_async_callback(replicas.stop)
        await replicas.start()
        log.info(
            "gateway up: %s, routing %s, in-flight cap %d per replica, queue %d x %gs, auth %s",
            f"replicas from DNS {config.upstream_url}" if config.dns else
            f"{len(config.upstreams)} replica(s) {', '.join(u.url for u in config.upstreams)}",
            s.routing,
            config.max_inflight,
            s.queue_depth,
            s.queue_timeout_s,
            "open" if config.access.keys.open else f"{len(config.access.keys.entries)} keys",
        )  # fmt: skip
        yield Components(
            config, policy, config.access, replicas, admission, metrics, completions, access_log
        )


def _on_health(metrics: GatewayMetrics, snap: Snapshot) -> None:
    metrics.warmup_state.state(snap.state)
    if snap.state != "ready":
        log.info("serving state: %s (instance %s)", snap.status_text, snap.engine_instance)
    else:
        log.info("serving state: ready (instance %s)", snap.engine_instance)


def _register_gauges(m: GatewayMetrics, adm: Admission, replicas: ReplicaSet) -> None:
    m.gauge("gateway_inflight", "Requests currently upstream", lambda: adm.inflight)
    m.gauge("gateway_queue_depth", "Requests waiting for a slot", lambda: adm.queued)
    m.gauge("gateway_inflight_limit", "The in-flight cap (sum over routable replicas)",
            lambda: adm.max_inflight)  # fmt: skip
    m.gauge(
        "gateway_engine_saturated",
        "1 while admissions are held on the engines' signal (every routable replica saturated)",
        lambda: float(adm.saturated),
    )
    m.gauge("gateway_replicas_ready", "Replicas up and warmed for their current instance",
            lambda: float(sum(1 for r in replicas.replicas if r.ready)))  # fmt: skip
    m.replica_collector(replicas.stats)

    def total(name: str, agg: Callable[[list[float]], float]) -> Callable[[], float]:
        def read() -> float:
            values = [float(getattr(r.sample, name)) for r in replicas.replicas if r.sample]
            return agg(values) if values else math.nan

        return read

    m.gauge("gateway_engine_waiting", "Engines' waiting requests, summed (last samples)",
            total("waiting", sum))  # fmt: skip
    m.gauge("gateway_engine_running", "Engines' running requests, summed (last samples)",
            total("running", sum))  # fmt: skip
    m.gauge("gateway_engine_kv_usage", "Highest KV cache usage 0-1 of the replicas (last samples)",
            total("kv_usage", max))  # fmt: skip
    m.gauge(
        "gateway_engine_metrics_age_seconds",
        "Age of the stalest replica's last engine metrics sample",
        lambda: max((r.monitor.metrics_age() for r in replicas.replicas), default=math.inf),
    )
