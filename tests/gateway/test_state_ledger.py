"""One chip-time ledger for the fleet (``gateway.state.ledger``) against a real redis-server:
one gateway takes the leadership, the other's finished work reaches it through Redis and is
charged there once, and the leadership passes on when its holder is gone."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from gateway.ledger import Ledger
from gateway.ledger.core import EngineCounters
from gateway.state.ledger import LEADER, FleetLedger
from gateway.state.store import SharedState
from tests.support.redis import Admin, RedisServer

pytestmark = pytest.mark.redis
COSTS = {"prefill_s": 1.0, "prefill_tokens": 100, "decode_s": 1.0, "decode_tokens": 10}


def charged(reg: CollectorRegistry, key: str) -> float:
    return sum(
        reg.get_sample_value("gateway_key_chip_seconds_total", {"key": key, "phase": p}) or 0.0
        for p in ("prefill", "decode")
    )


def test_the_fleet_charges_every_busy_second_once_at_the_leader(
    redis_server: RedisServer,
) -> None:
    async def go() -> None:
        now = [0.0]
        states = [SharedState(redis_server.url, lease_ttl_s=1.5, timeout_s=2.0) for _ in "ab"]
        regs = [CollectorRegistry() for _ in states]
        ledgers = [Ledger(r, 1, None, clock=lambda: now[0]) for r in regs]
        for st, ledger in zip(states, ledgers, strict=True):
            await st.start()
            fleet = FleetLedger(st, ledger)
            ledger.remote = fleet.send
            ledger.lead(False)
            st.pulls.append(fleet)
        a, b = ledgers
        try:
            await states[0].beat()  # a finds the leadership free
            await states[1].beat()
            assert a.leader and not b.leader
            assert await Admin(states[0]).get(LEADER) == states[0].id
            for ledger in ledgers:  # both sample the same engine
                ledger.poll([Sampled("r1", EngineCounters(0.0, 1))])
            a.finished("r1", "team-a", prompt=10, cached=0, completion=10)
            b.finished("r1", "team-b", prompt=10, cached=0, completion=10)
            await states[1].beat()  # b's work goes out with its heartbeat
            await states[0].beat()  # and reaches the leader with a's
            now[0] = 2.0
            for ledger in ledgers:
                ledger.poll([Sampled("r1", EngineCounters(2.0, 0, **COSTS))])
            busy = 2.0 * 0.5  # the trapezoid of running 1 -> 0 over 2 s
            assert charged(regs[0], "team-a") == pytest.approx(busy / 2)
            assert charged(regs[0], "team-b") == pytest.approx(busy / 2)
            assert charged(regs[1], "team-a") == charged(regs[1], "team-b") == 0.0
            # the leader goes (its key not given back): the other takes over within the lease
            await states[0].stop()
            deadline = time.monotonic() + 30  # a bound against a hang, not a timing claim
            while not b.leader:
                assert time.monotonic() < deadline, "the leadership never passed on"
                await asyncio.sleep(0.2)
                await states[1].beat()
            assert await Admin(states[1]).get(LEADER) == states[1].id
        finally:
            for st in states:
                if not st._closing:
                    await st.stop()

    asyncio.run(go())


class Sampled:
    def __init__(self, name: str, sample: EngineCounters) -> None:
        self.name, self.sample = name, sample
