"""The chip-time ledger on the real CPU engine (issue 28's "must show").

Two keys run concurrently with different shapes: ``prefill`` sends long prompts for few tokens,
``decode`` short prompts for many. Afterwards the keys' chip-seconds (``gateway_key_chip_seconds
_total``) must add up to the engine's busy time the gateway measured from the engine's own
``vllm:num_requests_running`` (sampled every 50 ms here, 250 ms by default): every busy second
charged to a key, none twice. Printed beside it, not asserted: the busy time the test measures
itself from the same gauge every 20 ms, and the client-side union of the requests' in-flight
intervals (longer: it includes the time a request spends in the gateway and in the engine's API
server, tokenising, before it is scheduled, which is not chip time). On this 2-core host, loaded
by the engine and the client, the two samplers disagreed by 20-35% in either direction (the
engine's /metrics answers late under load): the 5% agreement the issue asks for is not shown
here. The split must follow the keys' work: each key's share of the
chip-seconds within 8 points (``SPLIT_TOLERANCE``) of its share of the prefill and decode tokens weighted by the
engine's own per-token times (its histograms over the interval, as the ledger weighs them).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.tenancy.auth import hash_key
from tests.gateway.conftest import engine_metric
from tests.support.engine import Engine
from tests.support.gateway import RunningGateway, mark_warm, run_gateway
from tests.support.wait import wait_until

pytestmark = [pytest.mark.engine, pytest.mark.slow]
MODEL = "gemma-4-tiny"
KEYS = {"prefill": "sk-ledger-prefill-0123456789ab", "decode": "sk-ledger-decode-0123456789ab"}
SHAPES = {"prefill": (250, 4), "decode": (20, 96)}  # (prompt words, max tokens)
# gateway/README.md, the ledger's error bars: each settlement splits its busy time by the work
# that finished in it, and batching makes a period's busy time not quite proportional to its
# work; seen on this host: 0.1 to 4 points between the two shares
SPLIT_TOLERANCE = 0.08
STREAMS, REQUESTS = 8, 4  # per key: concurrent streams x requests each (a busy engine)


@pytest.fixture(scope="module")
def gw(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    keys = tmp_path_factory.mktemp("ledger") / "keys.yaml"
    keys.write_text(
        "keys:\n"
        + "".join(f"  - {{key: {hash_key(k)}, label: {label}}}\n" for label, k in KEYS.items())
    )
    env = {"GATEWAY_API_KEYS_FILE": str(keys), "GATEWAY_METRICS_POLL_S": "0.05"}
    with run_gateway(engine.url, env=env) as g:
        mark_warm(g)
        yield g


class BusySampler:
    """The engine's busy time (a request running), from its /metrics every ``every_s``."""

    def __init__(self, url: str, every_s: float = 0.02) -> None:
        self.url, self.every_s = url, every_s
        self.busy_s = 0.0
        self.last_running: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        prev: tuple[float, float] | None = None
        while not self._stop.is_set():
            try:
                running = engine_metric(self.url, "vllm:num_requests_running")
            except httpx.HTTPError:
                continue
            now = time.monotonic()
            if prev is not None:
                self.busy_s += (now - prev[0]) * ((prev[1] > 0) + (running > 0)) / 2
            prev, self.last_running = (now, running), running
            self._stop.wait(self.every_s)

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _words(n: int, rng: random.Random) -> str:
    # fresh random words per request: no prefix-cache hits (cached tokens would be credited)
    return " ".join(f"w{rng.randrange(10**6)}" for _ in range(n))


async def _load(gw: RunningGateway) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    rng = random.Random(28)

    async def stream(client: httpx.AsyncClient, label: str) -> None:
        words, max_tokens = SHAPES[label]
        for _ in range(REQUESTS):
            body = {"model": MODEL, "messages": [{"role": "user", "content": _words(words, rng)}],
                    "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
                    "stream": True}  # fmt: skip
            t0 = time.monotonic()
            async with client.stream(
                "POST", f"{gw.url}/v1/chat/completions", json=body,
                headers={"Authorization": f"Bearer {KEYS[label]}"},
            ) as r:  # fmt: skip
                assert r.status_code == 200, (await r.aread()).decode()
                async for _ in r.aiter_bytes():
                    pass
            spans.append((t0, time.monotonic()))

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(stream(client, k) for k in KEYS for _ in range(STREAMS)))
    return spans


def _engine_work(url: str) -> dict[str, float]:
    return {
        "prefill_s": engine_metric(url, "vllm:request_prefill_time_seconds_sum"),
        "prefill_tokens": engine_metric(url, "vllm:request_prefill_kv_computed_tokens_sum"),
        "decode_s": engine_metric(url, "vllm:request_decode_time_seconds_sum"),
        "decode_tokens": engine_metric(url, "vllm:generation_tokens_total"),
    }


def _chip(gw: RunningGateway, **labels: str) -> float:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return gw.metric(f"gateway_key_chip_seconds_total{{{inner}}}" if inner else
                     "gateway_key_chip_seconds_total", 0.0)  # fmt: skip


def test_key_chip_seconds_add_up_to_the_engine_busy_time(
    gw: RunningGateway, engine: Engine
) -> None:
    wait_until(lambda: engine_metric(engine.url, "vllm:num_requests_running") == 0,
               "an idle engine", timeout_s=60)  # fmt: skip
    before = _chip(gw)
    work0 = _engine_work(engine.url)
    tokens0 = {k: (gw.metric(f'gateway_key_tokens_total{{key="{k}",kind="prompt"}}', 0.0),
                   gw.metric(f'gateway_key_tokens_total{{key="{k}",kind="completion"}}', 0.0))
               for k in KEYS}  # fmt: skip
    with BusySampler(engine.url) as sampler:
        spans = asyncio.run(_load(gw))
        wait_until(lambda: sampler.last_running == 0, "the engine idle again", timeout_s=30)
    busy = sampler.busy_s
    # settled once the gateway saw the idle engine: every busy second charged
    charged = wait_until(lambda: _settled(gw, before), "the ledger settled", timeout_s=30)
    work1 = _engine_work(engine.url)
    per_key = {k: _chip(gw, key=k) for k in KEYS}
    print(f"\nengine busy {busy:.3f} s (client in-flight union {_union(spans):.3f} s), "
          f"charged {charged:.3f} chip-s, per key "
          + ", ".join(f"{k} {v:.3f}" for k, v in per_key.items()))  # fmt: skip
    # every busy second the gateway measured is charged to a key, none twice
    measured = gw.metric("gateway_replica_busy_seconds_total")
    assert _chip(gw) == pytest.approx(measured, rel=1e-6)
    # NOT asserted (see the module docstring): the gateway's sampled busy time against the
    # test's own sampler; on a loaded 2-core host the two differ by tens of percent
    # the split follows the work, weighted by the engine's own per-token phase times
    p = (work1["prefill_s"] - work0["prefill_s"]) / (
        work1["prefill_tokens"] - work0["prefill_tokens"]
    )
    d = (work1["decode_s"] - work0["decode_s"]) / (work1["decode_tokens"] - work0["decode_tokens"])
    weighted = {}
    for k in KEYS:
        prompt = gw.metric(f'gateway_key_tokens_total{{key="{k}",kind="prompt"}}') - tokens0[k][0]
        out = gw.metric(f'gateway_key_tokens_total{{key="{k}",kind="completion"}}') - tokens0[k][1]
        weighted[k] = prompt * p + out * d
    total_w, total_c = sum(weighted.values()), sum(per_key.values())
    for k in KEYS:
        print(f"{k}: work share {weighted[k] / total_w:.3f}, chip share {per_key[k] / total_c:.3f}")
        assert per_key[k] / total_c == pytest.approx(weighted[k] / total_w, abs=SPLIT_TOLERANCE)
    # The phase split follows each key's shape: the long-prompt key's charge is more prefill
    # than the long-output key's. Not "more prefill than decode" for it: that depends on the
    # engine's per-token phase times, and a CI run on a slow box measured decode per token 80x
    # prefill (batched decode time is per request, overlapping), enough to tip 4 output tokens
    # over ~300 prompt tokens (prefill key: 0.118 prefill vs 0.142 decode chip-seconds).
    prefill_part = {k: _chip(gw, key=k, phase="prefill") / per_key[k] for k in KEYS}
    print(f"prefill part of each key's charge: {prefill_part}")
    assert prefill_part["prefill"] > prefill_part["decode"], prefill_part


def _settled(gw: RunningGateway, before: float) -> float | None:
    """The chip-seconds charged since ``before``, once every measured busy second is charged
    (one chip per CPU replica: chip-seconds = busy seconds)."""
    charged = _chip(gw)
    busy = gw.metric("gateway_replica_busy_seconds_total", 0.0)
    settled = charged > before and abs(busy - charged) < 1e-6 * max(1.0, busy)
    return charged - before if settled else None
