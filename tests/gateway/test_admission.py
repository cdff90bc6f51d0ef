"""Admission control: cap, FIFO queue, per-key limit, saturation hold, Retry-After from drain rate."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission.core import Admission, Rejected
from gateway.admission.fairqueue import Sched

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(cap: int = 2, depth: int = 2, timeout: float = 30.0, per_key: int = 0, clock=None):
    return Admission(cap, depth, timeout, per_key, 120, clock or Clock())


def test_admits_up_to_the_cap_then_queues() -> None:
    adm = make(cap=2)
    assert adm.try_admit("a") and adm.try_admit("a")
    assert adm.inflight == 2
    assert adm.try_admit("a") is None


async def test_fifo_order_and_handoff_on_release() -> None:
    adm = make(cap=1, depth=3)
    ticket = adm.try_admit("a")
    assert ticket is not None
    waiters = [adm.enqueue(k) for k in ("x", "y", "z")]
    assert adm.queued == 3
    for i, expected in enumerate(waiters):
        adm.release(ticket)
        done = [w for w in waiters if w.future.done()]
        assert done == waiters[: i + 1]  # exactly one more grant, in arrival order
        ticket = expected.future.result()
        assert ticket.key == expected.key and adm.inflight == 1
    assert adm.queued == 0


async def test_new_arrivals_do_not_overtake_the_queue() -> None:
    adm = make(cap=1, depth=2)
    t = adm.try_admit("a")
    waiter = adm.enqueue("b")
    adm.release(t)  # the slot goes to the waiter ...
    assert waiter.future.done()
    assert adm.try_admit("c") is None  # ... not to a newcomer


async def test_queue_full_is_429_with_retry_after() -> None:
    adm = make(cap=1, depth=1)
    adm.try_admit("a")
    adm.enqueue("b")
    with pytest.raises(Rejected) as info:
        adm.enqueue("c")
    err = info.value
    assert (err.status, err.code) == (429, "queue_full")
    assert err.retry_after is not None and err.retry_after >= 1


async def test_depth_zero_means_no_queue() -> None:
    adm = make(cap=1, depth=0)
    adm.try_admit("a")
    with pytest.raises(Rejected):
        adm.enqueue("b")


async def test_retry_after_follows_the_observed_drain_rate() -> None:
    clock = Clock()
    adm = make(cap=1, depth=100, timeout=30, clock=clock)
    # Cold: no drain observed -> the queue's time budget.
    assert adm.retry_after(10) == 30
    for _ in range(11):  # 10 intervals of 0.5 s: 2 releases per second
        t = adm.try_admit("a")
        assert t is not None
        clock.t += 0.5
        adm.release(t)
    assert adm.drain_rate() == pytest.approx(2.0)
    fast = adm.retry_after(10)
    assert fast == 6  # 11 requests (10 ahead + this one) at 2/s
    clock.t += 50  # a slow period: only 2 releases in the last 60 s window ...
    for _ in range(2):
        t = adm.try_admit("a")
        clock.t += 5
        adm.release(t)
    slow = adm.retry_after(10)
    assert slow > fast  # ... the estimate follows the rate, it is not a constant
    assert slow == 120  # capped by max_retry_after_s


async def test_wait_timeout_rejects_and_frees_the_place() -> None:
    adm = make(cap=1, depth=2, timeout=0.05)
    adm.try_admit("a")
    waiter = adm.enqueue("b")
    assert await adm.wait(waiter, 0.05) is None
    err = adm.timed_out(waiter)
    assert (err.status, err.code) == (429, "wait_timeout")
    assert adm.queued == 0
    adm.enqueue("c")  # the place is free again
    assert adm.queued == 1


async def test_cancel_while_queued_frees_the_place_and_skips_the_waiter() -> None:
    adm = make(cap=1, depth=2)
    t = adm.try_admit("a")
    gone = adm.enqueue("gone")
    stays = adm.enqueue("stays")
    adm.cancel(gone)  # client disconnected while queued
    assert adm.queued == 1
    adm.release(t)
    assert stays.future.done() and gone.future.cancelled()
    assert adm.inflight == 1


async def test_cancel_after_a_late_grant_releases_the_slot() -> None:
    adm = make(cap=1, depth=1)
    t = adm.try_admit("a")
    w = adm.enqueue("b")
    adm.release(t)  # granted, but the client vanished before it took the ticket
    assert w.future.done()
    adm.cancel(w)
    assert adm.inflight == 0


async def test_release_is_idempotent() -> None:
    adm = make(cap=1)
    t = adm.try_admit("a")
    adm.release(t)
    adm.release(t)
    assert adm.inflight == 0


async def test_per_key_limit_counts_queued_and_running() -> None:
    adm = make(cap=1, depth=5, per_key=2)
    assert adm.try_admit("k") is not None
    adm.enqueue("k")
    with pytest.raises(Rejected) as info:
        adm.try_admit("k")
    assert info.value.code == "per_key_limit"
    assert adm.try_admit("other") is None  # other keys just queue
    adm.enqueue("other")
    assert adm.queued == 2 and adm.inflight == 1


async def test_saturation_holds_admissions_and_release_resumes() -> None:
    adm = make(cap=4, depth=4)
    adm.set_saturated(True)
    assert adm.try_admit("a") is None  # slots free, but the engine says no
    w = adm.enqueue("a")
    assert not w.future.done()
    adm.set_saturated(False)
    assert w.future.done() and adm.inflight == 1


async def test_wait_returns_the_ticket_when_granted() -> None:
    adm = make(cap=1, depth=1)
    t = adm.try_admit("a")
    w = adm.enqueue("b")
    asyncio.get_running_loop().call_later(0.01, adm.release, t)
    ticket = await adm.wait(w, 1.0)
    assert ticket is not None and ticket.key == "b"


async def test_a_served_requests_tokens_replace_its_reserved_cost_in_the_fair_order() -> None:
    """Cap 1, two keys each reserving 100 tokens a request. ``greedy`` is served first from the
    queue and turns out to use 10: its release settles the charge, so its next request goes
    before ``other``'s, which queued first. Unsettled (``used`` unknown) it would not."""
    for used, first in ((10.0, "greedy"), (None, "other")):
        adm = make(cap=1, depth=8)
        cost = Sched(cost=100.0)
        busy = adm.try_admit("busy")
        greedy, other = adm.enqueue("greedy", cost), adm.enqueue("other", cost)
        adm.release(busy)
        t = await adm.wait(greedy, 0)
        assert t is not None and t.charged == 100.0
        t.used = used
        adm.release(t)
        t_other = await adm.wait(other, 0)
        nexts = {k: adm.enqueue(k, cost) for k in ("other", "greedy")}
        adm.release(t_other)
        winner = next(k for k, w in nexts.items() if w.future.done())
        assert winner == first, (used, winner)
