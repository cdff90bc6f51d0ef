"""Overload and disconnects through the real gateway and engine (cap 4, queue 4)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest

from tests.gateway.conftest import SMALL, engine_metric
from tests.support.engine import Engine, core_stepped
from tests.support.gateway import NOCANCEL, RunningGateway, mark_warm, run_gateway
from tests.support.held import held_slots, holds
from tests.support.sse import error_events

pytestmark = [pytest.mark.engine, pytest.mark.anyio]
MODEL = "gemma-4-tiny"
CAP = int(SMALL["GATEWAY_MAX_INFLIGHT"])


def stream_body(max_tokens: int) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count"}],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }


def _sse_refusal(lines: list[str]) -> bool:
    if len(lines) < 2 or not error_events(lines[-2:-1]):
        return False
    return json.loads(lines[-2][6:])["error"]["code"] in ("wait_timeout", "queue_full")


async def wait_until(predicate, timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` (blocking HTTP, so in a thread: the streams on this loop keep being
    read meanwhile) until true; the bound only stops a hang, it is not a timing claim."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(holds, predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.1)


async def test_overload_4x_cap_only_200_or_429_and_admitted_complete(
    gateway: RunningGateway,
) -> None:
    n = 4 * CAP
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client:

        async def one() -> tuple[int, str | None, list[str]]:
            async with client.stream("POST", "/v1/chat/completions", json=stream_body(200)) as r:
                lines = [ln async for ln in r.aiter_lines() if ln.startswith("data: ")]
                return r.status_code, r.headers.get("retry-after"), lines

        results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 90)
    # A stream that queued long enough to get keep-alives has its 200 headers already: a refusal
    # after that is a terminal SSE error (code wait_timeout). Count it as the 429 it stands for.
    statuses = [429 if status == 200 and _sse_refusal(lines) else status
                for status, _, lines in results]  # fmt: skip
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= CAP  # the cap and the queue both served
    assert statuses.count(429) >= 1  # 16 at once into 4 + 4 places: some refused
    for (status, retry_after, lines), seen in zip(results, statuses, strict=True):
        if seen == 429 and status == 200:
            continue
        if status == 429:
            assert retry_after is not None and int(retry_after) >= 1
        else:
            assert lines[-1] == "data: [DONE]" and not error_events(lines)
    await wait_until(lambda: gateway.metric("gateway_inflight") == 0, 10)
    assert gateway.metric("gateway_queue_depth") == 0


# 8 sequences of 1,900 tokens: an abort shows as fewer. The engine's core runs in short steps
# until the client has its chunks and stays stopped while the disconnect travels
# (``disconnect_mid_stream``), so however starved the box it cannot finish them first.
DISCONNECT_BODY = {"model": MODEL, "prompt": "Count", "max_tokens": 1900, "n": 8, "stream": True,
                   "ignore_eos": True}  # fmt: skip
FULL_GENERATION = 8 * 1900


async def disconnect_mid_stream(gateway_url: str, engine: Engine, step: bool = True) -> float:
    """Read 3 chunks of a long generation through ``gateway_url``, hang up, wait until the
    engine runs nothing, and return how many tokens the engine generated for it.

    Counted, not timed: with ignore_eos the engine generates all FULL_GENERATION tokens unless the
    request is aborted, so a disconnect that reached the engine shows as fewer tokens. With
    ``step`` the engine's core generates only in short steps, each once the client has read what
    the last one produced (``tests.support.engine.CoreSteps``), and stays stopped from the third
    chunk until vLLM's API server has finished the request (its ``http_requests_total`` for the
    route moves only once the response is over, and an abandoned stream's abort is queued for the
    core on the way out). Why: two CI runs' API servers lagged their core by the whole generation
    (all 15,200 tokens were done before the third chunk reached the client), the second after
    the core was stopped only from the third chunk. Completions, not chat: chat's output parsers
    add lag on long random output.
    """
    before = engine_metric(engine.url, "vllm:generation_tokens_total")
    done = engine_metric(engine.url, "http_requests_total", handler="/v1/completions")
    got = 0
    async with httpx.AsyncClient(base_url=gateway_url, timeout=600) as client:

        async def read() -> None:
            nonlocal got
            async with client.stream("POST", "/v1/completions", json=DISCONNECT_BODY) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    got += line.startswith("data: {")  # tokens, not queue keep-alive comments
                    if got == 3:
                        break  # leaving the block closes the connection: a disconnect

        reader = asyncio.create_task(read())
        if step:
            async with core_stepped(engine) as core:
                await core.until(reader.done, lambda: got)
                await reader  # hung up, with the core stopped
                await wait_until(  # the API server is done with the request: its abort is queued
                    lambda: (
                        engine_metric(engine.url, "http_requests_total", handler="/v1/completions")
                        > done
                    ),
                    120,
                )
        else:
            await reader
    await wait_until(lambda: engine_metric(engine.url, "vllm:num_requests_running") == 0, 300)
    return engine_metric(engine.url, "vllm:generation_tokens_total") - before


async def test_disconnect_mid_stream_aborts_the_engine_request(
    gateway: RunningGateway, engine: Engine
) -> None:
    """A client that hangs up mid-stream stops the generation: with ``ignore_eos`` only an abort
    ends it before every one of FULL_GENERATION tokens (how early depends on how starved the
    box is: that is a benchmark's question, not this test's)."""
    gone_before = gateway_disconnects(gateway, "upstream")
    generated = await disconnect_mid_stream(gateway.url, engine)
    assert generated < FULL_GENERATION, f"all {generated} tokens generated: not aborted"
    await wait_until(lambda: gateway.metric("gateway_inflight") == 0, 10)
    assert gateway.metric("gateway_queue_depth") == 0
    assert gateway_disconnects(gateway, "upstream") == gone_before + 1


async def test_the_disconnect_check_fails_without_cancellation(engine: Engine) -> None:
    """The check above against a gateway that ignores disconnects (test-only build): the engine
    generates everything, so the check would fail. Proves the check is not vacuous. Not stepped:
    that gateway keeps the engine's response open, so the API server would never finish it while
    the core is stopped."""
    env = {**SMALL, **NOCANCEL}
    with run_gateway(engine.url, env=env) as gw:
        mark_warm(gw)
        generated = await disconnect_mid_stream(gw.url, engine, step=False)
    assert generated == FULL_GENERATION


async def test_disconnect_while_queued_frees_the_place(
    gateway: RunningGateway, engine: Engine
) -> None:
    """A client that gives up while queued leaves the queue and never reaches the engine.

    "Queued" is read from the stream itself (the gateway's ``: queued`` keep-alive comment, sent
    only while a request waits for a slot)."""
    before = engine_metric(engine.url, "http_requests_total", handler="/v1/chat/completions")
    gone_before = gateway_disconnects(gateway, "queued")
    async with (
        httpx.AsyncClient(
            base_url=gateway.url, timeout=120, limits=httpx.Limits(max_connections=CAP + 2)
        ) as client,
        held_slots(gateway, client, CAP),
    ):
        async with client.stream("POST", "/v1/chat/completions", json=stream_body(8)) as r:
            assert r.status_code == 200
            first = await asyncio.wait_for(anext(aiter(r.aiter_lines())), 60)
            assert first == ": queued", first  # waiting for a slot, not admitted
        # leaving the block closed the connection: the client gave up while queued
        await wait_until(lambda: gateway_disconnects(gateway, "queued") == gone_before + 1, 30)
        assert gateway.metric("gateway_queue_depth") == 0
    after = engine_metric(engine.url, "http_requests_total", handler="/v1/chat/completions")
    assert after == before  # the cancelled (chat) request never reached the engine
    await wait_until(lambda: gateway.metric("gateway_inflight") == 0, 10)


async def test_queued_stream_gets_keepalive_comments(gateway: RunningGateway) -> None:
    """A queued stream gets ``: queued`` comments while it waits, then its tokens once a slot
    frees up."""
    async with (
        httpx.AsyncClient(
            base_url=gateway.url, timeout=120, limits=httpx.Limits(max_connections=CAP + 2)
        ) as client,
        contextlib.AsyncExitStack() as slots,
    ):
        await slots.enter_async_context(held_slots(gateway, client, CAP))
        async with client.stream("POST", "/v1/chat/completions", json=stream_body(4)) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 60)
            await slots.aclose()  # the held streams end: a slot frees up and it is admitted
            rest = [ln async for ln in lines if ln]
    assert first == ": queued"  # sent while it waited for a slot
    assert rest[-1] == "data: [DONE]" and not error_events(rest)
    assert '"finish_reason":"length"' in rest[-2]  # all 4 tokens (vLLM may merge deltas)


def gateway_disconnects(gw: RunningGateway, phase: str) -> float:
    return gw.metric(f'gateway_client_disconnects_total{{phase="{phase}"}}', default=0.0)
