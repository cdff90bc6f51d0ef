"""Every part of a running gateway, built whole and torn down as one ``async with``.

``running(config)`` is the lifespan: it opens the engine clients, starts the monitor, yields a
``Components`` whose every field is live (nothing ``None`` until startup, no ``assert`` in the
routes), and on exit stops the monitor and closes the clients in reverse order, whatever
happened in between. ``GatewayConfig`` is what is known before startup (settings, keys, token);
it is built, and refuses bad configuration, without an event loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx

from env.settings import EngineSettings, GatewaySettings
from gateway.accesslog import AccessLog
from gateway.admission import Admission
from gateway.auth import Access
from gateway.health import HealthTracker, Snapshot
from gateway.metrics import GatewayMetrics
from gateway.monitor import EngineMonitor
from gateway.policy import Policy
from gateway.saturation import SaturationPolicy
from gateway.service import CompletionService, Timeouts
from gateway.tokens import TokenCounter
from gateway.upstream import make_client
from gateway.wire import EnginePool

log = logging.getLogger("gateway")
# httpx connections for /tokenize and the passthrough routes (/v1/models ...); the completions
# and the monitor's polls go through ``EnginePool``.
CONTROL_CONNECTIONS = 16


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway knows before it starts: settings, who may call it, its upstream."""

    engine: EngineSettings
    settings: GatewaySettings
    access: Access

    @property
    def upstream_url(self) -> str:
        return (self.settings.upstream_url or self.engine.url).rstrip("/")

    @property
    def max_inflight(self) -> int:
        return self.settings.max_inflight or self.engine.max_num_seqs


@dataclass(frozen=True)
class Components:
    """The live parts the routes are built from."""

    config: GatewayConfig
    policy: Policy
    access: Access
    health: HealthTracker
    admission: Admission
    metrics: GatewayMetrics
    monitor: EngineMonitor
    control: httpx.AsyncClient  # /tokenize and the passthrough routes
    completions: CompletionService
    access_log: AccessLog


@asynccontextmanager
async def running(config: GatewayConfig) -> AsyncIterator[Components]:
    s = config.settings
    policy = Policy.from_settings(config.engine, s)
    health = HealthTracker()
    metrics = GatewayMetrics()
    admission = Admission(
        config.max_inflight,
        s.queue_depth,
        s.queue_timeout_s,
        s.per_key_concurrency,
        s.max_retry_after_s,
    )
    async with AsyncExitStack() as stack:
        access_log = AccessLog(s.log_format)
        stack.callback(access_log.flush)  # the last lines, after everything else stopped
        pool = EnginePool(config.upstream_url, s.connect_timeout_s)
        stack.push_async_callback(pool.aclose)
        control = make_client(config.upstream_url, CONTROL_CONNECTIONS, s.connect_timeout_s, 10.0)
        stack.push_async_callback(control.aclose)
        monitor = EngineMonitor(
            pool,
            health,
            admission,
            SaturationPolicy(s.engine_waiting_threshold, s.kv_usage_threshold, s.metrics_max_age_s),
            s.metrics_poll_s,
            s.health_poll_s,
        )
        completions = CompletionService(
            policy=policy,
            health=health,
            tokens=TokenCounter(control, s.tokenize_timeout_s),
            admission=admission,
            engine=pool,
            liveness=monitor,
            metrics=metrics,
            timeouts=Timeouts(s.stream_idle_timeout_s, s.request_timeout_s, s.queue_keepalive_s),
        )
        _register_gauges(metrics, admission, monitor)
        health.subscribe(lambda snap: _on_health(metrics, snap))
        monitor.start()
        stack.push_async_callback(monitor.stop)
        log.info(
            "gateway up: upstream %s, in-flight cap %d, queue %d x %gs, auth %s",
            config.upstream_url,
            config.max_inflight,
            s.queue_depth,
            s.queue_timeout_s,
            "open" if config.access.keys.open else f"{len(config.access.keys.entries)} keys",
        )
        yield Components(
            config, policy, config.access, health, admission, metrics, monitor, control,
            completions, access_log,
        )  # fmt: skip


def _on_health(metrics: GatewayMetrics, snap: Snapshot) -> None:
    metrics.warmup_state.state(snap.state)
    if snap.state != "ready":
        log.info("serving state: %s (instance %s)", snap.status_text, snap.engine_instance)
    else:
        log.info("serving state: ready (instance %s)", snap.engine_instance)


def _register_gauges(m: GatewayMetrics, adm: Admission, monitor: EngineMonitor) -> None:
    m.gauge("gateway_inflight", "Requests currently upstream", lambda: adm.inflight)
    m.gauge("gateway_queue_depth", "Requests waiting for a slot", lambda: adm.queued)
    m.gauge("gateway_inflight_limit", "The in-flight cap", lambda: adm.max_inflight)
    m.gauge(
        "gateway_engine_saturated",
        "1 while admissions are held on the engine's signal (queue, KV, stale metrics)",
        lambda: float(adm.saturated),
    )

    def sample_attr(name: str) -> Callable[[], float]:
        def read() -> float:
            s = monitor.sample
            return float(getattr(s, name)) if s else math.nan

        return read

    m.gauge("gateway_engine_waiting", "Engine's waiting requests (last sample)",
            sample_attr("waiting"))  # fmt: skip
    m.gauge("gateway_engine_running", "Engine's running requests (last sample)",
            sample_attr("running"))  # fmt: skip
    m.gauge("gateway_engine_kv_usage", "Engine's KV cache usage 0-1 (last sample)",
            sample_attr("kv_usage"))  # fmt: skip
    m.gauge(
        "gateway_engine_metrics_age_seconds",
        "Age of the last engine metrics sample",
        monitor.metrics_age,
    )
