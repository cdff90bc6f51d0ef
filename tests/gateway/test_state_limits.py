"""The shared rate limits (``gateway.state.limits``) against a real redis-server: the Lua GCRA
gives the verdicts ``ratelimit.gcra`` gives, charges are atomic across stores (gateways), a
settlement moves the bucket as in memory, and one charge is one round trip."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from gateway.state.limits import RedisLimitStore
from gateway.state.store import SharedState
from gateway.state.url import StateUrlError, redact, resolve
from gateway.tenancy.ratelimit import Charge, MemoryStore
from tests.support.redis import Admin, RedisServer

pytestmark = pytest.mark.redis
T = TypeVar("T")
# The store's answer time allowed here: this machine is shared and loaded, and a late answer is a
# fallback to local shares (its own test below), not what the other tests are about.
LOADED_S = 2.0


def run(redis_server: RedisServer, body: Callable[[SharedState], Awaitable[T]]) -> T:
    """``body`` with a fresh store on an empty database."""

    async def go() -> T:
        state = SharedState(redis_server.url, lease_ttl_s=3.0, timeout_s=LOADED_S)
        await Admin(state).flushdb()
        try:
            return await body(state)
        finally:
            await state.stop()

    return asyncio.run(go())


def test_lua_and_python_agree_on_a_sequence_of_charges(redis_server: RedisServer) -> None:
    rng = random.Random(23)

    async def body(state: SharedState) -> None:
        shared = RedisLimitStore(state, server_clock=False)
        local = MemoryStore()
        now = 1000.0
        for step in range(300):
            now += rng.choice([0.0, 0.0, 0.37, 1.5, 4.0, 13.0])
            charges = [Charge("k/requests", 5, 1), Charge("k/tokens", 1000, rng.randint(1, 700))]
            if step % 7 == 0:
                charges = charges[1:]
            got = await shared.charge(charges, now)
            want = local.charge_now(charges, now)
            assert got.allowed == want.allowed, (step, got, want)
            for g, w in zip(got.windows, want.windows, strict=True):
                assert (g.limit, g.remaining, g.too_large) == (w.limit, w.remaining, w.too_large)
                assert g.reset_s == pytest.approx(w.reset_s, abs=1e-6)
                assert g.retry_after_s == pytest.approx(w.retry_after_s, abs=1e-6)
            if got.allowed and step % 3 == 0:  # a settlement: refund or overrun
                delta = rng.randint(-500, 200)
                shared.adjust(charges[-1], delta, now)
                local.adjust(charges[-1], delta, now)
                await state.beat()  # the outbox, flushed now
        assert shared.state.round_trips > 300

    run(redis_server, body)


def test_a_key_gets_exactly_its_rpm_across_gateways(redis_server: RedisServer) -> None:
    async def body(state: SharedState) -> None:
        others = [SharedState(redis_server.url, timeout_s=LOADED_S) for _ in range(2)]
        stores = [RedisLimitStore(s) for s in (state, *others)]
        try:
            verdicts = await asyncio.gather(
                *(stores[i % 3].charge([Charge("a/requests", 10, 1)], 0.0) for i in range(30))
            )
        finally:
            for s in others:
                await s.stop()
        assert sum(v.allowed for v in verdicts) == 10
        refused = [v for v in verdicts if not v.allowed]
        assert all(5.0 < v.retry_after_s <= 6.0 for v in refused)  # one comes back every 6 s

    run(redis_server, body)


def test_one_charge_is_one_round_trip_and_settlements_share_one(redis_server: RedisServer) -> None:
    async def body(state: SharedState) -> None:
        store = RedisLimitStore(state)
        before = state.round_trips
        charges = [Charge("b/requests", 100, 1), Charge("b/tokens", 10_000, 300)]
        for _ in range(10):
            assert (await store.charge(charges, 0.0)).allowed
        assert state.round_trips - before == 10
        before = state.round_trips
        for _ in range(10):
            store.adjust(charges[1], -200, 0.0)
        await asyncio.sleep(0.05)  # the outbox task: the ten settlements in one pipeline
        assert state.round_trips - before == 1
        window = store.peek(charges[1], 0.0)
        assert 9_000 <= window.remaining < 9_100  # 1000 used; ~167 come back per second

    async def started(state: SharedState) -> None:
        await state.start()
        await body(state)

    run(redis_server, started)


def test_a_refund_never_goes_below_full_and_a_too_large_request_is_named(
    redis_server: RedisServer,
) -> None:
    async def body(state: SharedState) -> None:
        store = RedisLimitStore(state, server_clock=False)
        tok = Charge("c/tokens", 100, 60)
        assert (await store.charge([tok], 50.0)).allowed
        store.adjust(tok, -1000, 50.0)
        await state.beat()
        assert await Admin(state).get("gw:rl:c/tokens") is None  # full again: nothing kept
        huge = await store.charge([Charge("c/tokens", 100, 101)], 50.0)
        assert not huge.allowed and huge.windows[0].too_large
        assert huge.retry_after_s == float("inf")

    run(redis_server, body)


def test_the_state_url_is_a_url_or_a_file_and_errors_hide_the_password(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert resolve("redis://state:6379/0") == "redis://state:6379/0"
    secret = tmp_path / "url"
    secret.write_text("\nredis://:hunter2@state:6379/1\n")
    assert resolve(str(secret)) == "redis://:hunter2@state:6379/1"
    for bad, why in [
        ("redis://:hunter2@state:notaport/0", "port"),
        ("http://state:6379/0", "scheme"),
        ("redis://:hunter2@state:6379/zero", "database"),
        (str(tmp_path / "missing"), "not a URL and not a readable file"),
    ]:
        with pytest.raises(StateUrlError) as err:
            resolve(bad)
        assert why in str(err.value) and "hunter2" not in str(err.value)
        assert "\n" not in str(err.value)
    assert redact("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"


def test_a_slow_store_falls_back_within_the_timeout_and_comes_back(
    redis_server: RedisServer,
) -> None:
    async def go() -> None:
        state = SharedState(redis_server.url, lease_ttl_s=0.9, timeout_s=0.3)
        admin = SharedState(redis_server.url)
        await state.start()
        store = RedisLimitStore(state)
        loop = asyncio.get_running_loop()
        try:
            await Admin(admin).execute_command("CLIENT", "PAUSE", 1500, "ALL")  # a stalled Redis
            t0 = loop.time()
            verdict = await store.charge([Charge("slow/requests", 10, 1)], 0.0)
            assert verdict.allowed and loop.time() - t0 < 1.0
            assert state.fallback and "Timeout" in str(state.describe()["reason"])
            t0 = loop.time()
            while state.fallback:  # the heartbeat probes and goes back by itself
                assert loop.time() - t0 < 5.0
                await asyncio.sleep(0.05)
            before = state.round_trips
            assert (await store.charge([Charge("slow/requests", 10, 1)], 0.0)).allowed
            assert state.round_trips == before + 1
        finally:
            await state.stop()
            await admin.stop()

    asyncio.run(go())


def test_an_unparsable_state_url_refuses_the_start_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from env.settings import EngineSettings, GatewaySettings
    from gateway.edge.app import ConfigError, create_app

    settings = GatewaySettings(
        state_url="redis://:hunter2@state:port/0", internal_token_file=tmp_path / "token"
    )
    with pytest.raises(ConfigError) as err:
        create_app(engine=EngineSettings(), settings=settings)
    message = str(err.value)
    assert message.startswith("GATEWAY_STATE_URL=") and "\n" not in message
    assert "hunter2" not in message
