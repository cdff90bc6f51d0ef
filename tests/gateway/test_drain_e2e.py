"""SIGTERM drains the gateway (gateway/drain.py), against the real CPU engine.

Sixteen streams, at most eight upstream at a time (``GATEWAY_MAX_INFLIGHT=8``): SIGTERM arrives
while eight are in flight and the rest wait in the admission queue. Every one of them ends with
``[DONE]``, a request that arrives during the drain gets 503 ``draining`` with ``Retry-After``
(the socket is still open to say so), ``/health`` says ``draining``, and the process exits 0 on
its own, before the drain timeout.

Why the queue: with only the eight in flight, the tiny CPU engine could finish them while a busy
CI machine had not yet scheduled the test's ``/health`` poll; the gateway then drained, closed
its socket and exited, and the poll was refused (a CI run did exactly that). SIGTERM is sent once
eight are upstream and two or more are queued: the drain stays open for at least one more round
of generation whatever the scheduling.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time

import httpx
import pytest

from tests.support.engine import Engine
from tests.support.gateway import mark_warm, run_gateway

pytestmark = [pytest.mark.engine]
MODEL = "gemma-4-tiny"


async def held(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """(``gateway_inflight``, ``gateway_queue_depth``) from the gateway's ``/metrics``."""
    text = (await client.get(f"{url}/metrics")).text
    values = []
    for name in ("gateway_inflight", "gateway_queue_depth"):
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert found, text
        values.append(float(found.group(1)))
    return values[0], values[1]


def test_sigterm_finishes_the_streams_in_flight_and_refuses_new_ones(engine: Engine) -> None:
    env = {
        "GATEWAY_DRAIN_TIMEOUT_S": "120", "GATEWAY_QUEUE_DEPTH": "16", "GATEWAY_MAX_INFLIGHT": "8",
        "GATEWAY_QUEUE_TIMEOUT_S": "300",  # a slow machine's queue wait is not what this tests
    }  # fmt: skip
    with run_gateway(engine.url, env=env) as gw:
        mark_warm(gw)
        ends: list[list[str]] = []

        async def stream(client: httpx.AsyncClient, i: int) -> None:
            body = {
                "model": MODEL, "stream": True, "max_tokens": 400, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"drain {i}"}],
            }  # fmt: skip
            lines: list[str] = []
            async with client.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    raise AssertionError(f"stream {i}: {r.status_code} {(await r.aread())!r}")
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
            ends.append(lines[-2:])

        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(timeout=300) as client:
                tasks = [asyncio.create_task(stream(client, i)) for i in range(16)]
                deadline = time.monotonic() + 120
                while True:  # 8 upstream, the rest queued
                    inflight, queued = await held(client, gw.url)
                    if inflight == 8 and queued >= 2:
                        break
                    for task in tasks:  # a stream refused or broken says why, now
                        if task.done() and task.exception() is not None:
                            raise AssertionError(f"a stream failed: {task.exception()}")
                    assert time.monotonic() < deadline, f"never 8 up, 2 queued: {inflight, queued}"
                    await asyncio.sleep(0.05)
                gw.server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                deadline = time.monotonic() + 30
                while True:  # the drain starts on the server's next tick (0.1 s)
                    health = await client.get(f"{gw.url}/health")
                    if health.status_code == 503 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                late = await client.post(
                    f"{gw.url}/v1/chat/completions",
                    json={"model": MODEL, "max_tokens": 4,
                          "messages": [{"role": "user", "content": "late"}]},
                )  # fmt: skip
                in_flight_while_refusing = sum(not t.done() for t in tasks)
                await asyncio.gather(*tasks)
                assert in_flight_while_refusing > 0  # the refusal came during the drain
                return health, late

        health, late = asyncio.run(scenario())
        assert health.status_code == 503 and health.json()["status"] == "draining"
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        assert int(late.headers["retry-after"]) >= 1
        assert len(ends) == 16 and all(end[-1] == "data: [DONE]" for end in ends), ends
        proc = gw.server.proc
        assert proc is not None
        assert proc.wait(timeout=60) == 0  # exits on its own once drained, status 0
        log = gw.server.log_path.read_text()
        assert "drained: shutting down" in log and "drain timeout" not in log
