"""The gateway's engine replicas: built, watched, counted and chosen as one set.

One ``Replica`` per upstream (``env/replicas.py`` says which: an explicit list, the profile's
``ENGINE_REPLICAS``, or a DNS name re-resolved every ``GATEWAY_DNS_REFRESH_S``). Each keeps the
per-instance state machine of ``health.py`` and its own monitor; this set turns them into what
the rest of the gateway needs:

- ``serving()``: may a new request be taken (any replica routable, the gateway not draining)?
  ``health()``: the ``/health`` answer (ready while at least ``GATEWAY_MIN_READY_REPLICAS``
  replicas are ready), with every replica listed.
- admission stays global: its cap is the sum of the routable replicas' caps and it holds new
  work only while *every* routable replica is saturated (lower priority classes already while
  every one is half way there: batch is held first); both are recomputed whenever a
  replica's state, saturation or drain flag moves (``_changed``).
- ``pick``: the routing scheduler over the current replicas (``gateway/routing``).
- warm-up reports are applied to the replica running the instance they name (409 otherwise);
  drain/undrain of one replica by name (``POST /internal/replicas/{name}/drain``).

A replica that leaves the DNS answer stops getting requests at once; its clients are closed
once its last request ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from env.replicas import Upstream, dns_target, static_upstreams
from env.settings import EngineSettings, GatewaySettings
from gateway.admission.core import Admission
from gateway.errors import engine_down
from gateway.metrics import ReplicaStats
from gateway.replicas.health import HealthTracker, ReportStatus, Snapshot, StaleInstance, State
from gateway.replicas.monitor import EngineMonitor
from gateway.replicas.replica import Replica
from gateway.replicas.saturation import SaturationPolicy
from gateway.routing import Request, Scheduler
from gateway.upstream.relay import make_client
from gateway.upstream.wire import EnginePool

log = logging.getLogger("gateway.replicas")
CONTROL_CONNECTIONS = 16  # httpx connections per replica for /tokenize and the passthroughs
# The state shown when no replica is ready: the most hopeful one among them.
_HOPE: tuple[State, ...] = ("warming_up", "warmup_failed", "engine_down")

Resolver = Callable[[str, int], Awaitable[list[str]]]


class SharedFlags(Protocol):
    """Where a warm-up report or a drain taken here goes for the other gateways
    (``gateway.state.view.ReplicaView``)."""

    def warmup(self, instance: str, status: str, step: str | None, detail: str | None) -> None: ...

    def drain(self, name: str, draining: bool) -> None: ...


async def resolve_all(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (a headless Service: one per ready pod), sorted."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class ReplicaOptions:
    """What every replica of this gateway shares."""

    cap: int  # in-flight cap per replica (GATEWAY_MAX_INFLIGHT or ENGINE_MAX_NUM_SEQS)
    connect_timeout_s: float
    saturation: SaturationPolicy
    metrics_poll_s: float
    health_poll_s: float
    warmup_status_port: int = 0


class ReplicaNotFound(KeyError):
    pass


class ReplicaSet:
    def __init__(
        self,
        upstreams: list[Upstream],
        options: ReplicaOptions,
        admission: Admission,
        scheduler: Scheduler,
        min_ready: int = 1,
        dns: tuple[str, str, int] | None = None,
        dns_refresh_s: float = 5.0,
        resolver: Resolver = resolve_all,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.clock = clock  # every replica's health and the set's own ``since``: one clock
        self.admission = admission
        self.scheduler = scheduler
        self.min_ready = min_ready
        self.dns = dns
        self.dns_refresh_s = dns_refresh_s
        self.resolver = resolver
        self.draining = False
        # GATEWAY_STATE_URL (gateway/state/view.py): warm-up reports and drains for the fleet.
        self.shared: SharedFlags | None = None
        self.replicas: list[Replica] = []
        self._retired: list[Replica] = []
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._serving = Snapshot("engine_down", None, None, None, clock())  # not 1970
        self._health = self._serving
        self._next_control = 0
        self._started = False
        self._dns_task: asyncio.Task[None] | None = None
        self._ambiguous: set[str] = set()  # instances two replicas shared (warned once)
        for up in upstreams:
            self.replicas.append(self._make(up))
        self._changed()

    # -- lifecycle -----------------------------------------------------------------------------

    def _make(self, up: Upstream) -> Replica:
        o = self.options
        health = HealthTracker(self.clock)
        pool = EnginePool(up.url, o.connect_timeout_s)
        control = make_client(up.url, CONTROL_CONNECTIONS, o.connect_timeout_s, 10.0)
        warm = _warm_status(control, up, o.warmup_status_port) if o.warmup_status_port else None
        monitor = EngineMonitor(
            pool, health, o.saturation, o.metrics_poll_s, o.health_poll_s, self._changed, warm
        )
        return Replica(up, o.cap, pool, control, health, monitor)

    async def start(self) -> None:
        self._started = True
        for r in self.replicas:
            r.monitor.start()
        if self.dns is not None:
            await self.refresh_dns()
            self._dns_task = asyncio.create_task(self._dns_loop(), name="upstream-dns")

    async def stop(self) -> None:
        if self._dns_task is not None:
            self._dns_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dns_task
        for r in [*self.replicas, *self._retired]:
            await r.monitor.stop()
            await r.pool.aclose()
            await r.control.aclose()
        self._retired.clear()

    async def refresh_dns(self) -> None:
        """Resolve the DNS name and make the replica set match it (a failure keeps the set)."""
        assert self.dns is not None
        scheme, host, port = self.dns
        try:
            addresses = await self.resolver(host, port)
        except OSError as exc:
            log.warning("GATEWAY_UPSTREAM_DNS %s did not resolve (%s): keeping %d replicas",
                        host, exc, len(self.replicas))  # fmt: skip
            return
        urls = [f"{scheme}://[{a}]:{port}" if ":" in a else f"{scheme}://{a}:{port}"
                for a in addresses]  # fmt: skip
        wanted = {Upstream(u).name: Upstream(u) for u in urls}
        current = {r.name for r in self.replicas}
        gone = [r for r in self.replicas if r.name not in wanted]
        for r in gone:
            log.info("replica %s left %s", r.name, host)
            self.replicas.remove(r)
            await r.monitor.stop()
            self._retired.append(r)
        for name, up in wanted.items():
            if name not in current:
                log.info("replica %s joined (%s)", name, host)
                r = self._make(up)
                self.replicas.append(r)
                if self._started:
                    r.monitor.start()
        await self._close_retired()
        if gone or len(wanted) != len(current):
            self._changed()

    async def _close_retired(self) -> None:
        for r in [r for r in self._retired if r.inflight == 0]:
            self._retired.remove(r)
            await r.pool.aclose()
            await r.control.aclose()

    async def _dns_loop(self) -> None:
        while True:
            await asyncio.sleep(self.dns_refresh_s)
            try:
                await self.refresh_dns()
            except Exception:  # never let discovery die: the set stays as it was
                log.exception("DNS refresh failed")

    # -- state ---------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        """Call ``listener`` with each new ``/health`` snapshot (metrics, the log)."""
        self._listeners.append(listener)
        listener(self._health)

    def _changed(self) -> None:
        routable = [r for r in self.replicas if r.routable]
        self.admission.set_capacity(sum(r.cap for r in routable))
        saturated = all(r.saturated for r in routable)
        if saturated != self.admission.saturated:
            self.admission.set_saturated(saturated)
        self.admission.set_pressured(all(r.monitor.pressured for r in routable))
        serving = self._aggregate(len(routable) >= 1)
        health = self._aggregate(
            sum(1 for r in self.replicas if r.ready) >= self.min_ready, keep=self._health
        )
        self._serving = serving
        if (health.state, health.engine_instance, health.step) != (
            self._health.state, self._health.engine_instance, self._health.step,
        ):  # fmt: skip
            self._health = health
            for listener in self._listeners:
                listener(health)

    def _aggregate(self, ok: bool, keep: Snapshot | None = None) -> Snapshot:
        """One snapshot for the set: ``ready`` when ``ok``; else the most hopeful replica's."""
        snaps = [r.health.snapshot() for r in self.replicas]
        if self.draining:
            return Snapshot("draining", None, None, None, _since(keep, "draining", self.clock))
        if ok:
            ready = [s for s in snaps if s.ready]
            first = ready[0] if len(self.replicas) == 1 else None
            return Snapshot("ready", first.engine_instance if first else None, None, None,
                            _since(keep, "ready", self.clock))  # fmt: skip
        if len(snaps) == 1:
            return snaps[0]
        for state in _HOPE:
            for s in snaps:
                if s.state == state:
                    return replace(s, since=_since(keep, state, self.clock))
        return Snapshot(
            "engine_down", None, None, "no replicas", _since(keep, "engine_down", self.clock)
        )

    def serving(self) -> Snapshot:
        """Whether new requests are taken: ``ready`` while any replica is routable."""
        return self._serving

    def health(self) -> Snapshot:
        """The ``/health`` state: ``ready`` while >= ``min_ready`` replicas are ready."""
        return self._health

    def describe(self) -> dict[str, object]:
        return {
            "replicas": [r.as_dict() for r in self.replicas],
            "ready": sum(1 for r in self.replicas if r.ready),
            "min_ready": self.min_ready,
            "draining": self.draining,
        }

    def stats(self) -> list[ReplicaStats]:
        """The per-replica metric series (``GatewayMetrics.replica_collector``)."""
        nan = math.nan
        out = []
        for r in self.replicas:
            smp = r.sample
            out.append(ReplicaStats(
                r.name, r.health.snapshot().state, r.draining, r.inflight, r.served,
                smp.waiting if smp else nan, smp.running if smp else nan,
                smp.kv_usage if smp else nan, r.monitor.metrics_age(),
            ))  # fmt: skip
        return out

    def begin_drain(self) -> None:
        """The gateway stops taking new requests (SIGTERM); what it holds finishes."""
        self.draining = True
        self._changed()

    # -- per replica ---------------------------------------------------------------------------

    def get(self, name: str) -> Replica:
        for r in self.replicas:
            if r.name == name:
                return r
        raise ReplicaNotFound(name)

    def set_draining(self, name: str, draining: bool, share: bool = True) -> Replica:
        """``share``: an operator's action here, written for every gateway (``shared``)."""
        r = self.get(name)
        if r.draining != draining:
            r.draining = draining
            log.info("replica %s %s", name, "draining" if draining else "back in rotation")
            self._changed()
        if share and self.shared is not None:
            self.shared.drain(name, draining)
        return r

    def report_warmup(
        self, instance: str, status: ReportStatus, step: str | None, detail: str | None,
        share: bool = True,
    ) -> Snapshot:  # fmt: skip
        """Apply a warm-up report to the replica running ``instance`` (``share``: a sidecar's
        report to this gateway, written for every gateway)."""
        same = [r.name for r in self.replicas if r.health.instance == instance]
        if len(same) > 1 and instance not in self._ambiguous:
            # The identity is the API server's process_start_time_seconds (10 ms resolution):
            # engines on one host started in the same tick share it, and a report cannot tell
            # them apart. It goes to the first; the others wait for their next start.
            self._ambiguous.add(instance)
            log.warning("replicas %s report the same engine instance %s: its warm-up reports "
                        "apply to %s only; restart the others", ", ".join(same), instance,
                        same[0])  # fmt: skip
        for r in self.replicas:
            if r.health.instance == instance:
                snap = r.health.report_warmup(instance, status, step, detail)
                self._changed()
                if share and self.shared is not None:
                    self.shared.warmup(instance, status, step, detail)
                return snap
        current = ", ".join(str(r.health.instance) for r in self.replicas) or None
        raise StaleInstance(instance, current)

    def instance_state(self, instance: str) -> Snapshot | None:
        for r in self.replicas:
            if r.health.instance == instance:
                return r.health.snapshot()
        return None

    def pick(self, request: Request, exclude: tuple[Replica, ...] = ()) -> Replica | None:
        return self.scheduler.pick(request, self.replicas, exclude)

    @property
    def wants_tokens(self) -> bool:
        """Whether the routing policy scores the prompt's token ids (``kv``)."""
        return self.scheduler.wants_tokens

    def control(self) -> httpx.AsyncClient:
        """An httpx client to a routable replica (in turn), else to the first one."""
        routable = [r for r in self.replicas if r.routable] or self.replicas
        if not routable:
            raise engine_down("no engine replica is known yet; retry later")
        self._next_control = (self._next_control + 1) % len(routable)
        return routable[self._next_control].control


def _since(keep: Snapshot | None, state: State, clock: Callable[[], float]) -> float:
    return keep.since if keep is not None and keep.state == state else clock()


def _warm_status(
    client: httpx.AsyncClient, up: Upstream, port: int
) -> Callable[[], Awaitable[dict[str, object] | None]]:
    """GET the replica's warm-up sidecar ``/ready`` (same host, ``port``): its JSON, or None."""
    host = urlsplit(up.url).hostname or ""
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/ready"

    async def read() -> dict[str, object] | None:
        try:
            r = await client.get(url, timeout=2.0)
            data = r.json()
        except (httpx.HTTPError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    return read


def build_upstreams(
    engine: EngineSettings, gateway: GatewaySettings
) -> tuple[list[Upstream], tuple[str, str, int] | None]:
    """The static list, or none and the DNS target (``env/replicas.py`` validates both)."""
    dns = dns_target(gateway)
    if dns is not None:
        return [], dns
    return static_upstreams(engine, gateway), None
