"""SIGTERM drains the gateway (gateway/edge/drain.py), against the real CPU engine.

Four streams hold the gateway's four slots (``GATEWAY_MAX_INFLIGHT=4``) and four more wait in
its admission queue when SIGTERM arrives. Every one of them ends with ``[DONE]``, a request that
arrives during the drain gets 503 ``draining`` with ``Retry-After`` (the socket is still open to
say so), ``/health`` says ``draining``, and the process exits 0 on its own, before the drain
timeout.

Why held slots (``tests/support/held.py``): the drain may end the moment nothing is left, and
the tiny CPU engine can finish short streams before a busy CI machine schedules the test's next
poll. Two CI runs lost that race (the streams were gone before the test saw them queued; the
gateway had drained and closed its socket before the ``/health`` poll). The four in flight are
held by clients that do not read, so the drain cannot end until the test lets them go, after it
has seen ``/health`` 503 and the late request refused; the queued streams are still waiting then.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.support.engine import Engine
from tests.support.gateway import mark_warm, run_gateway
from tests.support.held import gateway_state, held_slots, holds

pytestmark = [pytest.mark.engine]
MODEL = "gemma-4-tiny"
CAP = 4
QUEUED = 4


def test_sigterm_finishes_the_streams_in_flight_and_refuses_new_ones(engine: Engine) -> None:
    env = {
        "GATEWAY_DRAIN_TIMEOUT_S": "300", "GATEWAY_QUEUE_DEPTH": "8",
        "GATEWAY_MAX_INFLIGHT": str(CAP), "GATEWAY_QUEUE_TIMEOUT_S": "300",
    }  # fmt: skip
    with run_gateway(engine.url, env=env) as gw:
        mark_warm(gw)
        ends: list[list[str]] = []

        async def queued_stream(client: httpx.AsyncClient, i: int) -> None:
            body = {
                "model": MODEL, "stream": True, "max_tokens": 16, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"drain {i}"}],
            }  # fmt: skip
            lines: list[str] = []
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    raise AssertionError(f"stream {i}: {r.status_code} {(await r.aread())!r}")
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
            ends.append(lines[-2:])

        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            limits = httpx.Limits(max_connections=CAP + QUEUED + 4)
            async with httpx.AsyncClient(base_url=gw.url, timeout=300, limits=limits) as client:
                async with held_slots(gw, client, CAP):  # read to [DONE] on leaving the block
                    tasks = [asyncio.create_task(queued_stream(client, i)) for i in range(QUEUED)]
                    deadline = time.monotonic() + 120  # a bound against hanging, not a timing claim
                    while not await asyncio.to_thread(
                        holds, lambda: gw.metric("gateway_queue_depth") == QUEUED
                    ):
                        for task in tasks:  # a stream refused or broken says why, now
                            if task.done():
                                raise AssertionError(f"a queued stream ended: {task.exception()}")
                        assert time.monotonic() < deadline, gateway_state(gw)
                        await asyncio.sleep(0.1)
                    gw.server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                    deadline = time.monotonic() + 60
                    while True:  # the drain starts on the server's next tick (0.1 s)
                        health = await client.get("/health")
                        if health.status_code == 503:
                            break
                        assert time.monotonic() < deadline, health.text
                        await asyncio.sleep(0.05)
                    late = await client.post(
                        "/v1/chat/completions",
                        json={"model": MODEL, "max_tokens": 4,
                              "messages": [{"role": "user", "content": "late"}]},
                    )  # fmt: skip
                    assert not any(t.done() for t in tasks)  # the queue is still waiting
                await asyncio.gather(*tasks)  # admitted during the drain, as slots free
                return health, late

        health, late = asyncio.run(scenario())
        assert health.status_code == 503 and health.json()["status"] == "draining"
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        assert int(late.headers["retry-after"]) >= 1
        assert len(ends) == QUEUED and all(end[-1] == "data: [DONE]" for end in ends), ends
        proc = gw.server.proc
        assert proc is not None
        assert proc.wait(timeout=60) == 0  # exits on its own once drained, status 0
        log = gw.server.log_path.read_text()
        assert "drained: shutting down" in log and "drain timeout" not in log
