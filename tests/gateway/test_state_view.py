"""Warm-up reports and replica drains shared by every gateway (``gateway.state.view``), against
a real redis-server: a report or a drain taken by one gateway reaches another at its next
heartbeat, an undrain too, and a store restarted empty never puts a drained replica back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import redis

from gateway.replicas.health import HealthTracker
from gateway.state.store import SharedState
from gateway.state.view import DRAIN, ReplicaView
from tests.support.redis import Admin, RedisServer

pytestmark = pytest.mark.redis
INSTANCE = "engine-instance-1"


@dataclass
class Rep:
    name: str
    health: HealthTracker = field(default_factory=HealthTracker)
    draining: bool = False


@dataclass
class Reps:
    """What ``ReplicaView`` reads and applies to (``ReplicaSet``'s part), around real trackers."""

    replicas: list[Rep]
    shared: ReplicaView | None = None

    def report_warmup(
        self, instance: str, status: str, step: str | None, detail: str | None, share: bool = True
    ) -> object:
        rep = next(r for r in self.replicas if r.health.instance == instance)
        snap = rep.health.report_warmup(instance, status, step, detail)  # type: ignore[arg-type]
        if share and self.shared is not None:
            self.shared.warmup(instance, status, step, detail)
        return snap

    def set_draining(self, name: str, draining: bool, share: bool = True) -> object:
        rep = next(r for r in self.replicas if r.name == name)
        rep.draining = draining
        if share and self.shared is not None:
            self.shared.drain(name, draining)
        return rep


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    """The session's Redis, running and emptied before the gateways start: a warm-up report left
    by another test (``warmup_failed`` for the same engine process) is what a new gateway's first
    pull would otherwise apply."""
    if not redis_server.ping():
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushdb()
    return redis_server.url


async def gateway(url: str) -> tuple[SharedState, Reps]:
    state = SharedState(url, lease_ttl_s=30, timeout_s=2.0)
    reps = Reps([Rep("engine-0:8000")])
    reps.replicas[0].health.observe_engine(True, INSTANCE)  # both see the same engine process
    reps.shared = view = ReplicaView(state, reps)
    state.pulls.append(view)
    await state.start()
    return state, reps


def test_a_report_and_a_drain_taken_by_one_gateway_reach_the_other(url: str) -> None:
    async def go() -> None:
        a, b = await gateway(url), await gateway(url)
        try:
            ra, rb = a[1].replicas[0], b[1].replicas[0]
            assert rb.health.snapshot().state == "warming_up"
            a[1].report_warmup(INSTANCE, "passed", None, None)  # the sidecar POSTs to A
            await a[0].beat()  # A's outbox out (its heartbeat does this)
            await b[0].beat()  # B's next heartbeat reads it
            assert rb.health.snapshot().state == "ready"
            a[1].set_draining(ra.name, True)
            await a[0].beat()
            await b[0].beat()
            assert rb.draining
            b[1].set_draining(rb.name, False)  # undrained through B: A follows
            await b[0].beat()
            await a[0].beat()
            assert not ra.draining
            a[1].set_draining(ra.name, True)
            await a[0].beat()
            await b[0].beat()
            await Admin(a[0]).flushdb()  # the store restarted empty
            await b[0].beat()
            assert rb.draining  # absent is not "undrained"
            assert await Admin(a[0]).hgetall(DRAIN) == {}
        finally:
            await a[0].stop()
            await b[0].stop()

    asyncio.run(go())


def test_a_report_for_another_engine_process_changes_nothing(url: str) -> None:
    async def go() -> None:
        a, b = await gateway(url), await gateway(url)
        try:
            a[1].report_warmup(INSTANCE, "failed", "chat", "bad template")
            await a[0].beat()
            b[1].replicas[0].health.observe_engine(True, "engine-instance-2")  # B saw a restart
            await b[0].beat()
            assert b[1].replicas[0].health.snapshot().state == "warming_up"
        finally:
            await a[0].stop()
            await b[0].stop()

    asyncio.run(go())
