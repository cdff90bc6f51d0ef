"""One placement per prompt prefix for the fleet (``gateway.state.prefixes``), against a real
redis-server: two gateways whose own loads would place a prefix on two replicas agree after one
request; a placement whose replica left is replaced for all; a new gateway starts from the
fleet's placements; a malformed entry is skipped."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from gateway.routing.base import Request
from gateway.routing.prefix import PrefixAffinity
from gateway.state.prefixes import STREAM, FleetPrefixes
from gateway.state.store import SharedState
from tests.support.redis import Admin, RedisServer

pytestmark = pytest.mark.redis


@dataclass(eq=False)
class Replica:
    name: str
    routable: bool = True
    saturated: bool = False
    inflight: int = 0
    cap: int = 8

    @property
    def load(self) -> float:
        return float(self.inflight)


class Gateway:
    """One gateway's prefix table, shared through its own connection to the store."""

    def __init__(self, url: str) -> None:
        self.state = SharedState(url, lease_ttl_s=30, timeout_s=2.0)
        self.table = PrefixAffinity()
        self.fleet = FleetPrefixes(self.state, self.table)
        self.table.placed = self.fleet.place
        self.state.riders.append(self.fleet)

    def pick(self, text: str, replicas: list[Replica]) -> str:
        return self.table.pick(Request.keyed(text.encode()), replicas).name

    async def exchange(self) -> None:
        """What the outbox task does after a request: its writes, and the riders' reads."""
        await self.state._send_queued()


def test_two_gateways_agree_on_a_prefix_after_one_request_and_follow_a_replacement(
    redis_server: RedisServer,
) -> None:
    async def go() -> None:
        r1, r2 = Replica("r1"), Replica("r2")
        both = [r1, r2]
        a, b = Gateway(redis_server.url), Gateway(redis_server.url)
        for g in (a, b):
            await g.state.start()
        try:
            # b's own tie-breaking has moved on: alone, it would place the next prefix on r2
            assert b.pick("another prompt", both) == "r1"
            await b.exchange()
            assert a.pick("the system prompt", both) == "r1"
            await a.exchange()  # a's placement is the fleet's
            assert b.pick("the system prompt", both) == "r2"  # b has not heard yet: astray once
            await b.exchange()  # its offer loses; the pipeline that carried it brings r1 back
            assert [b.pick("the system prompt", both) for _ in range(5)] == ["r1"] * 5
            # a read b's placement of the other prompt with its own offer: it never places it
            assert a.pick("another prompt", both) == "r1"
            assert a.state._outbox == []

            # r1 leaves: a places the prefix on r2 (r3 is busy), replacing r1 for the whole fleet
            r3 = Replica("r3", inflight=4)
            assert a.pick("the system prompt", [r2, r3]) == "r2"
            await a.exchange()
            await b.state.beat()  # a heartbeat reads the placements too
            assert b.pick("the system prompt", both) == "r2"

            # a gateway that joins now starts from the fleet's placements
            c = Gateway(redis_server.url)
            await c.state.start()
            try:
                assert c.fleet.learned >= 4
                assert c.pick("the system prompt", both) == "r2"
                assert c.pick("another prompt", both) == "r1"
                # a malformed entry is skipped; the next good one is read
                await Admin(c.state).execute_command("XADD", STREAM, "*", "d", "zz", "r", "r9")
                await Admin(c.state).execute_command("XADD", STREAM, "*", "x", "1")
                assert c.pick("a third prompt", [r2, r3]) == "r2"
                await c.exchange()
                assert c.pick("a third prompt", both) == "r2"
                assert "r9" not in c.table.table.values()
                await a.state.beat()
                assert a.pick("a third prompt", both) == "r2"
            finally:
                await c.state.stop()
        finally:
            for g in (a, b):
                await g.state.stop()

    asyncio.run(go())


def test_with_the_store_down_each_gateway_keeps_its_own_table() -> None:
    async def go() -> None:
        g = Gateway("redis://127.0.0.1:1/0")  # nothing listens on port 1
        await g.state.start()
        try:
            assert g.state.fallback
            r1, r2 = Replica("r1"), Replica("r2")
            assert g.pick("the system prompt", [r1, r2]) == "r1"
            assert g.state._outbox == []  # the offer is dropped, not queued against a dead store
            assert [g.pick("the system prompt", [r1, r2]) for _ in range(3)] == ["r1"] * 3
        finally:
            await g.state.stop()

    asyncio.run(go())
