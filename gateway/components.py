"""Every part of a running gateway, built whole and torn down as one ``async with``.

``running(config)`` is the lifespan: it builds the replica set (each replica's clients and
monitor), starts it, yields a ``Components`` whose every field is live (nothing ``None`` until
startup, no ``assert`` in the routes), and on exit stops the monitors and closes the clients in
reverse order, whatever happened in between. ``GatewayConfig`` is what is known before startup
(settings, keys, token, the upstreams); it is built, and refuses bad configuration, without an
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Self

from env.replicas import Upstream
from env.settings import EngineSettings, GatewaySettings
from gateway import tracing
from gateway.admission.core import Admission
from gateway.admission.headroom import KeyShares
from gateway.call import Timeouts
from gateway.edge.accesslog import AccessLog
from gateway.ledger import Ledger
from gateway.metrics import GatewayMetrics
from gateway.replicas.core import ReplicaOptions, ReplicaSet, build_upstreams
from gateway.replicas.health import Snapshot
from gateway.replicas.saturation import SaturationPolicy
from gateway.request.policy import Policy
from gateway.request.tokens import TokenCounter
from gateway.resume import ResumePolicy
from gateway.routing import Scheduler, build_scheduler
from gateway.routing.prefix import PrefixAffinity
from gateway.service import CompletionService
from gateway.state.admission import FleetAdmission
from gateway.tenancy.auth import Access, KeysWatcher
from gateway.tenancy.core import Tenancy
from gateway.tenancy.ratelimit import MemoryStore

if TYPE_CHECKING:
    from gateway.kvindex import KVIndex
    from gateway.replicas.replica import Replica
    from gateway.state.leases import Leases
    from gateway.state.limits import RedisLimitStore
    from gateway.state.store import SharedState

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway knows before it starts: settings, who may call it, its upstream."""

    engine: EngineSettings
    settings: GatewaySettings
    access: Access
    upstreams: list[Upstream]  # the fixed replicas (empty with a DNS upstream)
    dns: tuple[str, str, int] | None = None  # GATEWAY_UPSTREAM_DNS: (scheme, host, port)
    state_url: str | None = None  # GATEWAY_STATE_URL resolved (a file read): shared state
    price_per_hour_usd: float | None = None  # PRICE_PER_HOUR_USD: the ledger's cost

    @classmethod
    def build(
        cls,
        engine: EngineSettings,
        settings: GatewaySettings,
        access: Access,
        price_per_hour_usd: float | None = None,
    ) -> Self:
        """Raises ``env.replicas.UpstreamError`` (one line per problem) for bad upstreams,
        ``gateway.state.url.StateUrlError`` for a bad ``GATEWAY_STATE_URL``."""
        upstreams, dns = build_upstreams(engine, settings)
        state_url = None
        if settings.state_url.strip():
            from gateway.state.url import resolve  # Redis only when configured

            state_url = resolve(settings.state_url)
        return cls(engine, settings, access, upstreams, dns, state_url, price_per_hour_usd)

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
    state: SharedState | None = None  # GATEWAY_STATE_URL: the fleet's shared state


@asynccontextmanager
async def running(config: GatewayConfig) -> AsyncIterator[Components]:
    s = config.settings
    policy = Policy.from_settings(config.engine, s)
    metrics = GatewayMetrics()
    state = _shared_state(config)
    admission = (Admission if state is None else partial(FleetAdmission, shared=state[1]))(
        config.max_inflight,
        s.queue_depth,
        s.queue_timeout_s,
        s.per_key_concurrency,
        s.max_retry_after_s,
        fair=s.scheduling == "fair",
        shares=KeyShares(tenants=lambda: config.access.keys.tenants),
    )
    store = MemoryStore() if state is None else state[2]
    tenancy = Tenancy(store, metrics, s.tpm_cached_tokens)
    async with AsyncExitStack() as stack:
        if state is not None:  # joined first, left last (its leases given back at exit)
            await state[0].start()
            stack.push_async_callback(state[0].stop)
            _state_gauges(metrics, state[0])
        access_log = AccessLog(s.log_format)
        stack.callback(access_log.flush)  # the last lines, after everything else stopped
        spans = tracing.build(s)  # GATEWAY_OTEL_ENDPOINT; the last spans flushed at exit
        stack.callback(spans.shutdown)
        ledger = Ledger(metrics.registry, config.engine.chips_each, _price_per_chip_s(config))
        kv_index = _kv_index(config, lambda: replicas.replicas)  # GATEWAY_ROUTING=kv
        scheduler = build_scheduler(s.routing, kv_index)
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
            scheduler,
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
            tracing=spans,
            ledger=ledger,
            resume=ResumePolicy.from_settings(s),
        )
        if s.api_keys_file is not None and not config.access.keys.open:
            keys_watcher = KeysWatcher(config.access.keys, Path(s.api_keys_file), s.keys_reload_s)
            keys_watcher.start()
            stack.push_async_callback(keys_watcher.stop)
        if state is not None:  # warm-up reports and drains taken by one gateway reach all
            from gateway.state.view import ReplicaView

            replicas.shared = view = ReplicaView(state[0], replicas)
            state[0].pulls.append(view)
            # one chip-time ledger for the fleet: this gateway's, or the leader's
            from gateway.state.ledger import FleetLedger

            fleet_ledger = FleetLedger(state[0], ledger)
            ledger.remote = fleet_ledger.send
            ledger.lead(False)  # until a heartbeat gives it the leadership
            state[0].pulls.append(fleet_ledger)
            _share_prefixes(state[0], scheduler)
        _register_gauges(metrics, admission, replicas)
        replicas.subscribe(lambda snap: _on_health(metrics, snap))
        stack.push_async_callback(replicas.stop)
        await replicas.start()
        ledger_task = asyncio.create_task(
            ledger.run(lambda: replicas.replicas, s.metrics_poll_s), name="chip-ledger"
        )
        stack.push_async_callback(_stop_task, ledger_task)
        if kv_index is not None:  # after the replicas: it subscribes to each of them
            await kv_index.start()
            stack.push_async_callback(kv_index.stop)
            m = metrics
            m.gauge("gateway_kv_index_blocks", "KV blocks the kv routing index holds, "
                    "all replicas", lambda: float(kv_index.blocks()))  # fmt: skip
            m.gauge("gateway_kv_index_live", "Replicas whose KV events this gateway "
                    "follows now", lambda: float(kv_index.live_count()))  # fmt: skip
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
            config, policy, config.access, replicas, admission, metrics, completions, access_log,
            None if state is None else state[0],
        )  # fmt: skip


def _kv_index(config: GatewayConfig, replicas: Callable[[], Sequence[Replica]]) -> KVIndex | None:
    """The engines' KV-cache index for ``GATEWAY_ROUTING=kv`` (imports ZMQ only then)."""
    if config.settings.routing != "kv":
        return None
    from gateway.kvindex import KVIndex, hash_algo

    e = config.engine
    return KVIndex(replicas, e.kv_events_port_offset, hash_algo(e.extra_args))


def _share_prefixes(state: SharedState, scheduler: Scheduler) -> None:
    """One placement per prompt prefix for the fleet (``gateway.state.prefixes``), where the
    policy places prefixes: ``prefix``, and ``kv``'s fallback to it."""
    picker: object = scheduler.picker
    table = picker if isinstance(picker, PrefixAffinity) else getattr(picker, "fallback", None)
    if not isinstance(table, PrefixAffinity):
        return
    from gateway.state.prefixes import FleetPrefixes

    fleet = FleetPrefixes(state, table)
    table.placed = fleet.place
    state.riders.append(fleet)


def _price_per_chip_s(config: GatewayConfig) -> float | None:
    """The deployment's price per chip-second: PRICE_PER_HOUR_USD over all its chips (the
    fixed replicas x chips each; one replica's worth with a DNS upstream)."""
    if config.price_per_hour_usd is None:
        return None
    chips = max(1, len(config.upstreams)) * config.engine.chips_each
    return config.price_per_hour_usd / 3600.0 / chips


async def _stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _shared_state(config: GatewayConfig) -> tuple[SharedState, Leases, RedisLimitStore] | None:
    """The fleet's shared state when ``GATEWAY_STATE_URL`` is set (imports Redis only then)."""
    if config.state_url is None:
        return None
    from gateway.state.leases import Leases
    from gateway.state.limits import RedisLimitStore
    from gateway.state.store import SharedState

    s = config.settings
    state = SharedState(config.state_url, s.state_failure, s.state_lease_ttl_s, s.state_timeout_s)
    return state, Leases(state), RedisLimitStore(state)


def _state_gauges(m: GatewayMetrics, state: SharedState) -> None:
    m.gauge("gateway_state_fallback",
            "1 while the shared state (GATEWAY_STATE_URL) is unavailable and this gateway "
            "enforces its local share (or refuses, GATEWAY_STATE_FAILURE=closed)",
            lambda: float(state.fallback))  # fmt: skip
    m.gauge("gateway_state_gateways", "Live gateways in the last membership seen",
            lambda: float(state.gateways))  # fmt: skip
    m.gauge("gateway_state_round_trips", "Round trips to the shared state since start",
            lambda: float(state.round_trips))  # fmt: skip


def _on_health(metrics: GatewayMetrics, snap: Snapshot) -> None:
    metrics.warmup_state.state(snap.state)
    if snap.state != "ready":
        log.info("serving state: %s (instance %s)", snap.status_text, snap.engine_instance)
    else:
        log.info("serving state: ready (instance %s)", snap.engine_instance)


def _register_gauges(m: GatewayMetrics, adm: Admission, replicas: ReplicaSet) -> None:
    m.gauge("gateway_inflight", "Requests currently upstream", lambda: adm.gauges()[0])
    m.gauge("gateway_queue_depth", "Requests waiting for a slot", lambda: adm.gauges()[1])
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
