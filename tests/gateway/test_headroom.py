"""Headroom between keys (gateway/admission/headroom.py), in the admission queue with a fake clock.

The promise: while another key is active, a flooding key holds at most the cap minus the reserve,
so the other key's request is admitted at once (not after a flood stream ends). Alone, or once
the other key has been idle for ``ACTIVE_S``, the flooding key may use every slot but one when
the keys file names other tenants (the next key's first request starts at once), the whole cap
when it names no other.
"""

from __future__ import annotations

import pytest

from gateway.admission.core import Admission
from gateway.admission.headroom import ACTIVE_S, KeyShares

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_reserve_is_an_eighth_of_the_cap_and_at_least_one_slot() -> None:
    shares = KeyShares()
    for cap, limit in ((8, 7), (64, 56), (2, 1)):
        shares.inflight = {"flood": limit}
        shares.last_seen = {"flood": 0.0, "other": 0.0}
        assert not shares.ok("flood", cap, now=0.0, busy=set())
        shares.inflight = {"flood": limit - 1}
        assert shares.ok("flood", cap, now=0.0, busy=set())
    assert KeyShares().ok("flood", 1, now=0.0, busy=set())  # a cap of 1 has nothing to reserve


async def test_a_flooding_key_leaves_a_slot_for_another_active_key() -> None:
    clock = Clock()
    adm = Admission(8, 64, 30.0, 0, 120, clock)
    other = adm.try_admit("short")  # the other key is active ...
    assert other is not None
    adm.release(other)  # ... and idle again, but seen a moment ago
    tickets = [adm.try_admit("flood") for _ in range(7)]
    assert all(t is not None for t in tickets) and adm.inflight == 7
    assert adm.try_admit("flood") is None  # the 8th slot is the reserve: queue instead
    queued = adm.enqueue("flood")
    assert adm.inflight == 7 and not queued.future.done()
    ticket = adm.try_admit("short")  # would have waited for a flood stream without it
    assert ticket is None  # the queue is not empty: it joins it, fair order picks it first
    waiter = adm.enqueue("short")
    assert waiter.future.done() and adm.inflight == 8 and not queued.future.done()
    adm.release(waiter.future.result())
    assert not queued.future.done() and adm.inflight == 7  # the reserve stays free ...
    clock.t += ACTIVE_S + 1  # ... until the short key has been quiet for ACTIVE_S
    adm.set_capacity(8)  # (anything that pumps the queue)
    assert queued.future.done() and adm.inflight == 8


async def test_alone_a_key_uses_the_whole_cap() -> None:
    adm = Admission(8, 64, 30.0, 0, 120, Clock())
    assert all(adm.try_admit("only") is not None for _ in range(8)) and adm.inflight == 8


async def test_alone_among_several_tenants_a_key_leaves_one_slot_for_the_next_first_request() -> (
    None
):
    tenants = [3]
    clock = Clock()
    adm = Admission(8, 64, 30.0, 0, 120, clock, shares=KeyShares(tenants=lambda: tenants[0]))
    flood = [adm.try_admit("flood") for _ in range(7)]
    assert all(t is not None for t in flood)
    assert adm.try_admit("flood") is None  # the 8th slot waits for a key that was never seen
    queued = adm.enqueue("flood")
    assert not queued.future.done() and adm.inflight == 7
    first = adm.enqueue("short")  # the short key's very first request: no flood stream to end
    assert first.future.done() and adm.inflight == 8
    adm.release(first.future.result())
    assert not queued.future.done()  # the short key is active now: the 1/8 reserve holds
    clock.t += ACTIVE_S + 1
    adm.set_capacity(8)  # (anything that pumps the queue)
    assert not queued.future.done() and adm.inflight == 7  # alone again: all slots but one
    tenants[0] = 1  # a reload leaves one tenant: nobody else can come, the whole cap is its
    adm.set_capacity(8)
    assert queued.future.done() and adm.inflight == 8


async def test_fifo_mode_keeps_the_old_behaviour() -> None:
    adm = Admission(8, 64, 30.0, 0, 120, Clock(), fair=False)
    adm.release(adm.try_admit("short"))  # type: ignore[arg-type]
    assert all(adm.try_admit("flood") is not None for _ in range(8))


async def test_engine_pressure_holds_batch_first_and_interactive_last() -> None:
    from gateway.admission.fairqueue import Sched

    interactive, batch = Sched(priority=10), Sched(priority=0)
    adm = Admission(8, 64, 30.0, 0, 120, Clock())
    assert adm.try_admit("chat", interactive) is not None  # both classes known to admission
    adm.set_pressured(True)  # every replica half way to saturated
    assert adm.try_admit("etl", batch) is None  # batch waits ...
    held = adm.enqueue("etl", batch)
    assert adm.try_admit("chat", interactive) is None  # (the queue is not empty: join it)
    chat = adm.enqueue("chat", interactive)
    assert chat.future.done() and not held.future.done()  # ... interactive still goes
    adm.set_saturated(True)
    assert adm.try_admit("chat", interactive) is None  # saturated: everyone waits
    adm.set_saturated(False)
    adm.set_pressured(False)
    assert held.future.done()
