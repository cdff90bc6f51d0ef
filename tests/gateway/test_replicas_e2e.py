"""Two real CPU engines behind one gateway: spread, prefix affinity (one gateway, and two that
share their state), and a replica killed under load (issue 12's "must show", against vLLM
itself).

The second engine belongs to this module (it is killed here); the first is the session's. The
gateway routes with ``GATEWAY_ROUTING=prefix``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bench.gatewayproc import mark_all_warm, replicas
from entrypoint.process import descendants, groups_of
from tests.gateway.conftest import engine_metric
from tests.support.engine import Engine, assert_confined, last_core, running_after
from tests.support.gateway import RunningGateway, pair_gateway
from tests.support.load import steady_chats
from tests.support.redis import RedisServer
from tests.support.sse import error_events
from tests.support.wait import wait_until, wait_until_async

pytestmark = [pytest.mark.engine, pytest.mark.slow]
MODEL = "gemma-4-tiny"
SYSTEM = (
    "You are the on-call assistant of a platform team. Answer in one short sentence, cite the "
    "runbook section, never invent a command, and say when a human must decide. " * 5
)  # longer than the routing key (512 characters): requests differ only after it


@pytest.fixture(scope="module")
def pair(engine: Engine, engine2: Engine) -> Iterator[RunningGateway]:
    with pair_gateway(engine.url, engine2.url, "prefix") as gw:
        yield gw


@pytest.fixture
def engine2_restored(pair: RunningGateway, engine2: Engine) -> Iterator[Engine]:
    """For a test that kills or restarts engine2: afterwards it runs and is ready in the gateway
    again, whatever the test did or where it failed, so the module's other tests find it as the
    module fixture gave it (not in the state a failed kill left it)."""
    with running_after(engine2):
        yield engine2
    mark_all_warm(pair, timeout_s=120, only={f"127.0.0.1:{engine2.port}"})


def served(gw: RunningGateway) -> dict[str, int]:
    return {str(r["name"]): int(r["served"]) for r in replicas(gw)}  # type: ignore[call-overload]


def chat(gw: RunningGateway, messages: list[dict[str, str]], max_tokens: int = 1) -> None:
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": max_tokens},
        timeout=120,
    )
    assert r.status_code == 200, r.text


def test_distinct_prefixes_spread_evenly(pair: RunningGateway) -> None:
    before = served(pair)
    for i in range(24):
        chat(pair, [{"role": "user", "content": f"question {i}: which port does the engine use?"}])
    counts = [served(pair)[n] - before[n] for n in before]
    assert sum(counts) == 24 and max(counts) / max(1, min(counts)) <= 1.3, counts


def test_a_shared_prefix_lands_on_one_replica_and_hits_its_prefix_cache(
    pair: RunningGateway, engine: Engine, engine2: Engine
) -> None:
    before = served(pair)
    chat(pair, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "first"}])
    home = next(n for n, c in served(pair).items() if c > before[n])
    home_url = engine.url if home.endswith(f":{engine.port}") else engine2.url
    hits_before = engine_metric(home_url, "vllm:prefix_cache_hits_total")
    for i in range(19):
        question = {"role": "user", "content": f"incident {i}: the gateway returns 503"}
        chat(pair, [{"role": "system", "content": SYSTEM}, question])
    after = served(pair)
    assert after[home] - before[home] >= 18, (before, after)  # >= 90% of 20 on one replica
    assert engine_metric(home_url, "vllm:prefix_cache_hits_total") > hits_before


@pytest.mark.redis
def test_two_gateways_sharing_state_send_a_shared_prefix_to_one_replica(
    engine: Engine, engine2: Engine, redis_server: RedisServer
) -> None:
    """Issue 23's prefix check: 2 gateways x 2 real replicas, 20 requests sharing a system
    prompt alternating between the gateways. Alone, each gateway would place the prompt by its
    own tie-breaking, which the first request to b moves on: a on one replica, b on the other."""
    state = {"GATEWAY_STATE_URL": redis_server.url}
    system = SYSTEM.replace("platform team", "fleet of gateways")
    with (
        pair_gateway(engine.url, engine2.url, "prefix", state) as a,
        pair_gateway(engine.url, engine2.url, "prefix", state) as b,
    ):
        chat(b, [{"role": "user", "content": "which port does the engine use?"}])
        before = {n: served(a)[n] + served(b)[n] for n in served(a)}
        urls = {f"127.0.0.1:{e.port}": e.url for e in (engine, engine2)}
        hits = {n: engine_metric(u, "vllm:prefix_cache_hits_total") for n, u in urls.items()}
        for i in range(20):
            question = {"role": "user", "content": f"incident {i}: the gateway returns 503"}
            chat((a, b)[i % 2], [{"role": "system", "content": system}, question])
        after = {n: served(a)[n] + served(b)[n] for n in served(a)}
        landed = {n: after[n] - before[n] for n in after}
        home = max(landed, key=lambda n: landed[n])
        assert landed[home] >= 18, landed  # >= 90% of 20 on one replica, whichever gateway
        assert engine_metric(urls[home], "vllm:prefix_cache_hits_total") > hits[home]


@dataclass
class Outcome:
    status: int | None = None
    first_byte: bool = False
    done: bool = False
    sse_error: bool = False
    exception: str | None = None
    lines: list[str] = field(default_factory=list)


async def one_stream(client: httpx.AsyncClient, url: str, i: int) -> Outcome:
    out = Outcome()
    body = {
        "model": MODEL, "stream": True, "max_tokens": 48, "ignore_eos": True,
        "messages": [{"role": "user", "content": f"stream {i}"}],
    }  # fmt: skip
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            out.status = r.status_code
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    out.first_byte = True
                    out.lines.append(line)
                    out.done = out.done or line == "data: [DONE]"
            out.sse_error = bool(error_events(out.lines))
    except httpx.HTTPError as exc:
        out.exception = f"{type(exc).__name__}: {exc}"
    return out


def kill_hard(eng: Engine) -> None:
    """SIGKILL the replica: the entrypoint's group and every group under it (vLLM's)."""
    pid = eng.server.pid
    for pgid in {pid, *groups_of(descendants(pid))}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    assert eng.server.proc is not None
    eng.server.proc.wait(timeout=30)


@pytest.mark.usefixtures("engine2_restored")
def test_a_replica_killed_under_load_fails_over_and_rejoins_only_when_warm(
    pair: RunningGateway, engine2: Engine, tmp_path: Path
) -> None:
    name2 = f"127.0.0.1:{engine2.port}"
    outcomes: list[Outcome] = []
    health: list[int] = []

    async def load(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=120) as client:

            async def worker(w: int) -> None:
                i = 0
                while not stop.is_set():
                    outcomes.append(await one_stream(client, pair.url, w * 1000 + i))
                    i += 1

            async def watch_health() -> None:
                while not stop.is_set():
                    health.append((await client.get(f"{pair.url}/health")).status_code)
                    await asyncio.sleep(0.2)

            await asyncio.gather(*(worker(w) for w in range(16)), watch_health())

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load(stop))

        async def load_running() -> None:
            if task.done():  # the load stopped: its own error, not a wait that runs out
                await task
                raise AssertionError("the load ended early")

        async def on_both() -> bool:
            await load_running()
            # off the loop: a slow /internal/replicas answer must not stall the load
            counts = await asyncio.to_thread(served, pair)
            return counts.get(name2, 0) >= 8 and len(outcomes) >= 8

        await wait_until_async(on_both, "load on both replicas", 120)
        await asyncio.to_thread(kill_hard, engine2)
        killed_at = len(outcomes)

        async def after_kill() -> bool:  # keep the load up after the kill
            await load_running()
            return len(outcomes) >= killed_at + 32

        await wait_until_async(after_kill, "32 more requests after the kill", 240)
        stop.set()
        await task

    asyncio.run(scenario())
    not_started = [o for o in outcomes if not o.first_byte]
    assert not_started == [], not_started[:3]  # every request that had not streamed failed over
    cut = [o for o in outcomes if not o.done]
    assert all(o.status == 200 and o.sse_error for o in cut), cut[:3]  # a terminal SSE error
    assert len(outcomes) - len(cut) >= 32
    assert set(health) == {200}  # the other replica kept /health green throughout

    state = {str(r["name"]): r for r in replicas(pair)}
    assert state[name2]["state"] == "engine_down"
    engine2.server.start()  # a new process: a new instance, not yet warmed
    wait_until(
        lambda: next(r for r in replicas(pair) if r["name"] == name2)["state"] == "warming_up",
        f"{name2} seen again, warming up", 60,
    )  # fmt: skip
    before = served(pair)[name2]
    for i in range(6):
        chat(pair, [{"role": "user", "content": f"after the restart {i}"}])
    assert served(pair)[name2] == before  # not routed to before its warm-up passed
    mark_all_warm(pair, only={name2})
    for i in range(6):
        chat(pair, [{"role": "user", "content": f"warm again {i}"}])
    assert served(pair)[name2] > before


@pytest.mark.usefixtures("engine2_restored")
@pytest.mark.timeout(1500)  # an engine restart on 2 busy cores; a bound against a hang
def test_a_rolling_restart_under_load_fails_no_request(
    pair: RunningGateway, engine2: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """``deploy.rolling`` (what ``make rolling-restart`` runs) restarts replica 2 while 2 clients
    keep sending: drain, restart, warm (the handshake a sidecar would post), undrain.

    The clients pause 0.5 s between requests: a steady load, not a saturating one. On 2 cores
    the load competes with the restarting engine's start-up (~40 CPU-seconds of imports and
    compiles): 4 clients pausing 0.1 s stretched it to 5 minutes once and past 10 another time,
    which tests the machine, not the restart. The product's own restart paths (make dev's
    policy, compose's restart) are tested with ``make rolling-restart`` in tests/deploy and
    tests/compose."""
    from deploy.rolling import Internal, rolling_restart

    name2 = f"127.0.0.1:{engine2.port}"

    def instance() -> object:
        return next(r for r in replicas(pair) if r["name"] == name2)["engine_instance"]

    def restart(replica: object, index: int) -> None:
        """The harness's restart: a graceful stop, a start on the same port (a silent start is
        diagnosed by ServerProcess.start, never retried), then the sidecar's part: "passed"
        for the new instance once the gateway sees it."""
        old = instance()
        engine2.server.stop()
        engine2.server.start()
        assert_confined(engine2, {last_core()})
        wait_until(lambda: instance() not in (None, old), f"{name2}'s new instance seen", 120)
        mark_all_warm(pair, only={name2})

    with steady_chats(pair.url, clients=2, tag="rolling") as results:
        done = rolling_restart(
            Internal(pair.url, pair.token_file), restart, drain_timeout_s=120,
            ready_timeout_s=600, only=[name2],
        )  # fmt: skip
        after = len(results)
        # traffic still flows once it is back in rotation
        wait_until(lambda: len(results) >= after + 8, "8 more answers after the restart", 60)
    failed = [r for r in results if r != 200]
    with capsys.disabled():
        print(f"\nrolling restart under load: {len(results)} requests, {len(failed)} failed")
    assert done == [name2] and failed == [] and len(results) > 0
