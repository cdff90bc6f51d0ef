"""One engine replica as the gateway sees it: its clients, its serving state, its load.

Connection state apart from per-request state (uvicorn's split): a ``Replica`` owns what lives as
long as the replica (the token path's ``EnginePool``, the control client, the ``HealthTracker`` and
``EngineMonitor`` keyed by engine instance, the drain flag); what one request does to it is two
integer updates (``inflight``), made by ``Lease`` so every exit path gives the slot back.

The routing plugins read a replica through ``gateway.routing.Candidate`` (the narrow view they
define); the service sends through ``pool``; the replica set watches ``health`` and ``monitor``.
"""

from __future__ import annotations

import httpx

from env.replicas import Upstream
from gateway.replicas.health import HealthTracker
from gateway.replicas.monitor import EngineMonitor
from gateway.replicas.saturation import EngineSample
from gateway.upstream.wire import EnginePool


class Replica:
    __slots__ = (
        "cap", "control", "draining", "health", "inflight", "monitor", "name", "pool", "served",
        "url",
    )  # fmt: skip

    def __init__(
        self,
        upstream: Upstream,
        cap: int,
        pool: EnginePool,
        control: httpx.AsyncClient,
        health: HealthTracker,
        monitor: EngineMonitor,
    ) -> None:
        self.name = upstream.name
        self.url = upstream.url
        self.cap = cap  # the engine's max-num-seqs: what it runs at once
        self.pool = pool
        self.control = control
        self.health = health
        self.monitor = monitor
        self.inflight = 0  # requests of this gateway on this replica now
        self.served = 0  # requests sent here since start (the spread, in /internal/replicas)
        self.draining = False

    # -- the view the routing plugins read (gateway.routing.Candidate) -------------------------

    @property
    def ready(self) -> bool:
        return self.health.snapshot().ready

    @property
    def routable(self) -> bool:
        """Takes new requests: up, warmed for its current instance, not draining."""
        return not self.draining and self.health.snapshot().ready

    @property
    def saturated(self) -> bool:
        return self.monitor.saturated

    @property
    def sample(self) -> EngineSample | None:
        return self.monitor.sample

    @property
    def load(self) -> float:
        """Outstanding work: this gateway's requests here, plus what the engine reports running
        or waiting beyond them (another gateway's). KV pressure is not added: a few percent of
        cache in use would break every tie the same way; the ``HasRoom`` filter steers away
        from a replica whose cache is nearly full (saturated) instead."""
        s = self.monitor.sample
        if s is None:
            return float(self.inflight)
        return self.inflight + max(0.0, s.waiting + s.running - self.inflight)

    def lease(self) -> Lease:
        return Lease(self)

    def as_dict(self) -> dict[str, object]:
        snap = self.health.snapshot()
        return {
            "name": self.name,
            "url": self.url,
            "state": snap.state,
            "engine_instance": snap.engine_instance,
            "step": snap.step,
            "since": snap.since,
            "draining": self.draining,
            "inflight": self.inflight,
            "served": self.served,
            "cap": self.cap,
            "saturated": self.saturated,
        }


class Lease:
    """``with replica.lease():`` one request counted on the replica for as long as it runs."""

    __slots__ = ("_replica",)

    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    def __enter__(self) -> Replica:
        self._replica.inflight += 1
        self._replica.served += 1
        return self._replica

    def __exit__(self, *exc: object) -> None:
        self._replica.inflight -= 1
