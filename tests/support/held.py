"""Gateway slots held for as long as a test needs them, whatever the engine's speed.

``held_slots`` opens ``n`` streams whose clients do not read until the block ends: each response
(8 x 1,900 tokens with 5 logprobs, ~7 MB) is larger than what the kernel buffers between the
gateway and a client that does not read (~4.5 MB on Linux loopback), so the gateway's relay
stalls on backpressure and cannot finish, however fast the engine generates. Neither a first
token nor the response headers can tell admission on this box (the CPU engine's API server may
send both only when the generation is over), so admission is read from the gateway's
``gateway_inflight`` gauge; with the slots held, a slow scrape is only slow. On leaving, the
streams are read to their end (a stream stalled by a slow client resumes whole) and each must
end ``[DONE]``. Completions, so that chat requests counted by the engine are only the ones
under test. Used by the admission tests (a queue behind a full gateway) and the drain test (a
drain that cannot end before the test has looked at it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import httpx

from tests.support.gateway import RunningGateway

MODEL = "gemma-4-tiny"
HELD_BODY = {"model": MODEL, "prompt": "Count", "max_tokens": 1900, "n": 8, "logprobs": 5,
             "stream": True, "ignore_eos": True}  # fmt: skip


def holds(predicate: Callable[[], object]) -> bool:
    """A scrape that times out is "not yet": on 2 busy cores the gateway relaying streams next
    to the engine can be seconds late answering /metrics."""
    try:
        return bool(predicate())
    except httpx.TimeoutException:
        return False


def gateway_state(gw: RunningGateway) -> str:
    """The gateway's own gauges and counters, for a failure message."""
    skip = ("gateway_request_duration", "gateway_ttft", "gateway_queue_wait")
    lines = gw.metrics_text().splitlines()
    return "\n".join(ln for ln in lines if ln.startswith("gateway_") and not ln.startswith(skip))


@contextlib.asynccontextmanager
async def held_slots(
    gateway: RunningGateway, client: httpx.AsyncClient, n: int
) -> AsyncIterator[None]:
    """``n`` admitted streams that keep the gateway's slots for as long as the block runs
    (``client`` has the gateway as its base URL and room for ``n`` connections)."""
    release = asyncio.Event()
    # A previous test's load can leave the gateway a moment of engine_down (a /health poll
    # answered late): start from a serving gateway, so a refused hold means a real failure.
    deadline = time.monotonic() + 60
    while not await asyncio.to_thread(
        holds, lambda: httpx.get(f"{gateway.url}/health", timeout=10).status_code == 200
    ):
        assert time.monotonic() < deadline, "the gateway never served (/health)"
        await asyncio.sleep(0.1)

    async def one() -> tuple[int, str | None]:
        async with client.stream("POST", "/v1/completions", json=HELD_BODY) as r:
            if r.status_code != 200:
                return r.status_code, (await r.aread()).decode()[:300]
            await release.wait()
            last = None
            async for line in r.aiter_lines():
                last = line or last
            return r.status_code, last

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    try:
        deadline = time.monotonic() + 120  # a bound against hanging, not a timing claim
        while not await asyncio.to_thread(holds, lambda: gateway.metric("gateway_inflight") >= n):
            ended = [t.exception() or t.result() for t in tasks if t.done()]
            assert not ended, f"a held stream ended before all were admitted: {ended}"
            assert time.monotonic() < deadline, gateway_state(gateway)
            await asyncio.sleep(0.1)
        yield
    finally:
        release.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 300)
    assert results == [(200, "data: [DONE]")] * n
