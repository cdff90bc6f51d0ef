"""GCRA window maths (pure, explicit times) and the memory store's all-or-nothing charges."""

from __future__ import annotations

import asyncio
import math

import pytest

from gateway.tenancy.ratelimit import Charge, MemoryStore, adjusted, gcra, window


def test_five_per_minute_burst_then_one_every_twelve_seconds() -> None:
    tat, now = 0.0, 100.0
    for i in range(5):  # a fresh bucket: the whole limit at once
        tat, w = gcra(tat, now, 1, 5, 60.0)
        assert w.retry_after_s == 0 and w.remaining == 4 - i
    tat6, w = gcra(tat, now + 1.0, 1, 5, 60.0)
    assert tat6 == tat  # refused: nothing charged
    assert w.retry_after_s == pytest.approx(11.0)  # the first unit comes back at now + 12 s
    assert w.remaining == 0 and w.reset_s == pytest.approx(59.0)
    _, w = gcra(tat, now + 12.0, 1, 5, 60.0)
    assert w.retry_after_s == 0 and w.remaining == 0  # exactly on time: allowed


def test_token_costs_and_a_request_larger_than_the_limit() -> None:
    tat, w = gcra(0.0, 10.0, 600, 1000, 60.0)
    assert w.remaining == 400 and w.reset_s == pytest.approx(36.0)
    _, w = gcra(tat, 10.0, 500, 1000, 60.0)
    assert w.retry_after_s == pytest.approx(6.0)  # 100 tokens must come back: 100 * 0.06 s
    _, w = gcra(0.0, 10.0, 1001, 1000, 60.0)
    assert w.too_large and math.isinf(w.retry_after_s)


def test_settlement_refunds_and_overruns_move_the_window() -> None:
    tat, _ = gcra(0.0, 0.0, 600, 1000, 60.0)  # reserved 600 at t=0
    refunded = adjusted(tat, 1.0, -500, 1000, 60.0)  # used only 100
    assert window(refunded, 1.0, 1000, 60.0).remaining == 900 + 16  # 1 s refilled ~16.7
    assert adjusted(tat, 100.0, -500, 1000, 60.0) == 100.0  # already full: stays full
    over = adjusted(tat, 1.0, 200, 1000, 60.0)
    assert over == pytest.approx(tat + 12.0)


def test_store_charges_all_limits_or_none() -> None:
    store = MemoryStore()
    req = Charge("k/requests", 10, 1)
    big = Charge("k/tokens", 100, 90)

    async def go() -> None:
        assert (await store.charge([req, big], 0.0)).allowed
        v = await store.charge([req, Charge("k/tokens", 100, 20)], 0.0)
        assert not v.allowed and v.windows[0].retry_after_s == 0
        assert v.retry_after_s == pytest.approx(6.0)  # 10 tokens at 0.6 s each
        assert store.peek(req, 0.0).remaining == 9  # the refused call charged no request
        store.adjust(big, -90, 1.0)
        assert store.peek(big, 1.0).remaining == 100

    asyncio.run(go())
