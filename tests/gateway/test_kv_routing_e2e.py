"""``GATEWAY_ROUTING=kv`` over two real CPU engines with KV-cache events on (issue 25).

The session's ``engine`` and ``engine2`` publish their events (``tests/support/engine.py`` turns
``ENGINE_KV_EVENTS`` on); one gateway routes with ``kv``. The test process runs its own
``KVIndex`` subscribed to both engines, as a second gateway would: the gateway's scoring is what
this index predicts (two gateways score alike, gateway/README.md).

The promises:
- the index's predicted cached-prefix length of a request, on the replica that served it, equals
  the engine's own prefix-cache hits for it (``vllm:prefix_cache_hits_total``, per request:
  requests go one at a time and the event stream is let settle before each, so nothing is in
  flight between the prediction and the engine's lookup). Tolerance: every request exact but
  one in ten, and the totals within 5 % (a batch still in the publisher's queue when the
  stream looked settled would shift one request);
- ``kv`` sends a request to the replica that holds its prefix (the hit rate over the repeats);
- a publisher that vanishes (engine2 restarted): the index drops engine2's entries at once, the
  gateway serves every request throughout, and the new engine's (empty) cache is predicted as
  such once it is back.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from bench.gatewayproc import mark_all_warm
from bench.kvrouting import WORDS
from gateway.kvindex import KVIndex
from tests.gateway.conftest import engine_metric
from tests.support.engine import Engine, running_after
from tests.support.gateway import RunningGateway, pair_gateway

pytestmark = [pytest.mark.engine, pytest.mark.slow]
MODEL = "gemma-4-tiny"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def kv_pair(engine: Engine, engine2: Engine) -> Iterator[RunningGateway]:
    with pair_gateway(engine.url, engine2.url, "kv") as gw:
        yield gw


@dataclass
class _Health:
    instance: str | None = None


@dataclass
class Watched:
    name: str
    url: str
    health: _Health


def doc(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def counters(eng: Engine) -> tuple[float, float]:
    return (engine_metric(eng.url, "vllm:prefix_cache_queries_total"),
            engine_metric(eng.url, "vllm:prefix_cache_hits_total"))  # fmt: skip


async def settled(index: KVIndex) -> None:
    """Until the event stream is quiet: the same last sequence numbers over 0.3 s."""
    last = None
    async with asyncio.timeout(30):
        while True:
            now = tuple(v.last_seq for v in index.views.values())
            if now == last:
                return
            last = now
            await asyncio.sleep(0.3)


async def tokens_of(client: httpx.AsyncClient, url: str, prompt: str) -> list[int]:
    r = await client.post(f"{url}/tokenize", json={"model": MODEL, "prompt": prompt})
    return list(r.json()["tokens"])


async def served_one(
    client: httpx.AsyncClient, gw: RunningGateway, engines: dict[str, Engine], prompt: str,
    index: KVIndex,
) -> tuple[str, int, float, dict[str, int]]:  # fmt: skip
    """Send one completion through the gateway: (replica, predicted there, engine hits, all
    predictions)."""
    await settled(index)
    tokens = await tokens_of(client, next(iter(engines.values())).url, prompt)
    predicted = index.cached(tokens, list(engines)) or {}
    before = {n: counters(e) for n, e in engines.items()}
    r = await client.post(f"{gw.url}/v1/completions",
                          json={"model": MODEL, "prompt": prompt, "max_tokens": 1})  # fmt: skip
    assert r.status_code == 200, r.text
    after = {n: counters(e) for n, e in engines.items()}
    chosen = [n for n in engines if after[n][0] - before[n][0] >= len(tokens)]
    assert len(chosen) == 1, (before, after)
    name = chosen[0]
    return name, predicted.get(name, 0), after[name][1] - before[name][1], predicted


@pytest.mark.anyio
async def test_predictions_match_engine_hits_and_kv_follows_the_cache(
    kv_pair: RunningGateway, engine: Engine, engine2: Engine
) -> None:
    engines = {f"127.0.0.1:{e.port}": e for e in (engine, engine2)}
    index = KVIndex(lambda: [Watched(n, e.url, _Health()) for n, e in engines.items()], 1000)
    await index.start()
    try:
        async with asyncio.timeout(30):
            while index.live_count() < 2:
                await asyncio.sleep(0.05)
        docs = [doc(100 + k, 420) for k in range(4)]  # ~750 tokens each: several 256-token units
        rng = random.Random(7)
        plan = list(range(4)) + [rng.randrange(4) for _ in range(16)]
        rows = []
        async with httpx.AsyncClient(timeout=120) as client:
            for i, k in enumerate(plan):
                prompt = f"{docs[k]} question {i}: {doc(1000 + i, rng.randint(3, 60))}"
                rows.append((k, *await served_one(client, kv_pair, engines, prompt, index)))
        exact = sum(1 for _, _, p, h, _ in rows if p == h)
        total_p = sum(p for _, _, p, _, _ in rows)
        total_h = sum(h for _, _, _, h, _ in rows)
        print(f"\nkv e2e: {exact}/{len(rows)} predictions exact, predicted {total_p} vs engine "
              f"hits {total_h:.0f} tokens")  # fmt: skip
        assert exact >= 0.9 * len(rows), rows
        assert total_h > 0 and abs(total_p - total_h) <= 0.05 * total_h, rows
        # Every repeat that some replica could serve from cache went to the one holding the most
        # of it. (A repeat no replica can serve: Gemma's sliding-window group keeps a block only
        # at each cached prompt's own end, so a shared document hits only from a boundary an
        # earlier request ended on: predicted 0, and the engine agreed, above.)
        servable = [row for row in rows[4:] if max(row[4].values()) > 0]
        assert len(servable) >= 8, rows
        assert all(p == max(all_.values()) for _, _, p, _, all_ in servable), servable
    finally:
        await index.stop()


@pytest.mark.anyio
async def test_a_vanished_publisher_is_forgotten_and_serving_goes_on(
    kv_pair: RunningGateway, engine: Engine, engine2: Engine
) -> None:
    engines = {f"127.0.0.1:{e.port}": e for e in (engine, engine2)}
    name2 = f"127.0.0.1:{engine2.port}"
    index = KVIndex(lambda: [Watched(n, e.url, _Health()) for n, e in engines.items()], 1000)
    await index.start()
    try:
        async with asyncio.timeout(30):
            while index.live_count() < 2:
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(timeout=120) as client:
            on2 = None
            for k in range(8):  # new documents alternate: one lands on engine2
                prompt = f"{doc(200 + k, 420)} first question"
                name, *_ = await served_one(client, kv_pair, engines, prompt, index)
                if name == name2:
                    on2 = prompt
                    break
            assert on2 is not None
            tokens = await tokens_of(client, engine.url, on2)
            await settled(index)
            assert (index.cached(tokens, [name2]) or {}).get(name2, 0) > 0
            with running_after(engine2):
                await asyncio.to_thread(engine2.server.stop)
                async with asyncio.timeout(30):  # the publisher's disconnect is seen at once
                    while index.live(name2) is not None or len(index.views[name2]):
                        await asyncio.sleep(0.05)
                for i in range(6):  # the gateway serves throughout (engine2's requests fail over)
                    r = await client.post(f"{kv_pair.url}/v1/completions", json={
                        "model": MODEL, "prompt": f"{on2} while down {i}", "max_tokens": 1})  # fmt: skip
                    assert r.status_code == 200, r.text
                await asyncio.to_thread(engine2.server.start)
            await asyncio.to_thread(mark_all_warm, kv_pair, 120.0, {name2})
            async with asyncio.timeout(60):
                while index.live(name2) is None:
                    await asyncio.sleep(0.05)
            # The new engine instance holds nothing: predicted so, and the engine agrees.
            assert (index.cached(tokens, [name2]) or {}).get(name2, 0) == 0
            before = counters(engine2)
            r = await client.post(f"{engine2.url}/v1/completions",
                                  json={"model": MODEL, "prompt": on2, "max_tokens": 1})  # fmt: skip
            assert r.status_code == 200 and counters(engine2)[1] == before[1]
    finally:
        await index.stop()
