"""warmup/status.py: /ready, /livez and /metrics over a real loopback socket, the probe faked.

The probe is the only thing replaced (``instances``: replica URL -> its current instance, or
absent for an engine that does not answer), so every answer goes through the server's own
request parsing and HTTP framing. One test probes a real (FakeEngine) /metrics page.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from protocol.prometheus import Scrape
from tests.warmup.fakes import FakeEngine, serve
from warmup.status import (
    CACHE_SAVE_FAILURES,
    CACHE_SAVED,
    EngineDown,
    StatusServer,
    Tracked,
    WarmState,
    judge,
    probe_instance,
)

A, B = "http://127.0.0.1:8000", "http://127.0.0.1:8001"


def fake_probe(instances: dict[str, str]) -> Callable[[str], Awaitable[str | None]]:
    async def probe(url: str) -> str | None:
        if url not in instances:
            raise EngineDown("ConnectError: connection refused")
        return instances[url]

    return probe


def with_server(replicas: list[Tracked], instances: dict[str, str], requests: list[str]) -> list:
    """Start the server on a free loopback port, GET each path, return (status, json) each."""

    async def go() -> list[tuple[int, Any]]:
        server = StatusServer(replicas, fake_probe(instances))
        port = await server.start("127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                out = []
                for path in requests:
                    resp = await client.get(path)
                    assert resp.headers["content-type"] == "application/json"
                    out.append((resp.status_code, resp.json()))
                return out
        finally:
            await server.close()

    return asyncio.run(go())


def one(state: WarmState, url: str = A, name: str = "127.0.0.1:8000") -> Tracked:
    return Tracked(name, url, state)


def test_ready_is_200_only_for_a_pass_of_the_current_instance() -> None:
    warm = WarmState("passed", "100.0")
    [(code, doc), (code_new, doc_new), (code_down, doc_down)] = [
        with_server([one(warm)], instances, ["/ready"])[0]
        for instances in ({A: "100.0"}, {A: "200.0"}, {})
    ]
    assert (code, doc) == (200, {"replica": "127.0.0.1:8000", "state": "passed",
                                 "engine_instance": "100.0"})  # fmt: skip
    # The engine restarted a moment ago: the pass was for the old instance.
    assert code_new == 503 and doc_new["state"] == "waiting"
    assert doc_new["engine_instance"] == "200.0"
    assert code_down == 503 and doc_down["state"] == "engine_down"
    assert "connection refused" in doc_down["detail"]


@pytest.mark.parametrize(
    ("warm", "state"),
    [
        (WarmState("running", "100.0"), "running"),
        (WarmState("failed", "100.0", "prompt_64", "HTTP 400: too long"), "failed"),
        (WarmState("waiting"), "waiting"),
    ],
)
def test_ready_is_503_with_the_state_otherwise(warm: WarmState, state: str) -> None:
    [(code, doc)] = with_server([one(warm)], {A: "100.0"}, ["/ready"])
    assert code == 503 and doc["state"] == state
    if state == "failed":
        assert (doc["step"], doc["detail"]) == ("prompt_64", "HTTP 400: too long")


def test_several_replicas_ready_only_when_all_passed_and_one_can_be_asked() -> None:
    a = one(WarmState("passed", "1.0"))
    b = one(WarmState("running", "2.0"), B, "127.0.0.1:8001")
    instances = {A: "1.0", B: "2.0"}
    got = with_server([a, b], instances, ["/ready", "/ready?replica=127.0.0.1:8000",
                                          "/ready?replica=127.0.0.1:8001",
                                          "/ready?replica=10.0.0.9:8000"])  # fmt: skip
    (all_code, all_doc), (a_code, a_doc), (b_code, b_doc), (x_code, x_doc) = got
    assert all_code == 503 and all_doc["state"] == "running"
    assert [(r["replica"], r["state"]) for r in all_doc["replicas"]] == [
        ("127.0.0.1:8000", "passed"),
        ("127.0.0.1:8001", "running"),
    ]
    assert (a_code, a_doc["state"]) == (200, "passed")
    assert (b_code, b_doc["state"]) == (503, "running")
    assert (
        x_code == 404 and "10.0.0.9:8000" in x_doc["error"] and "127.0.0.1:8001" in x_doc["error"]
    )

    b.warm.set("passed", "2.0")
    [(code, doc)] = with_server([a, b], instances, ["/ready"])
    assert code == 200 and doc["state"] == "passed"


def test_the_aggregate_names_the_worst_state() -> None:
    replicas = [
        one(WarmState("running", "1.0")),
        one(WarmState("failed", "2.0", "chat", "boom"), B, "127.0.0.1:8001"),
    ]
    [(code, doc)] = with_server(replicas, {A: "1.0", B: "2.0"}, ["/ready"])
    assert code == 503 and doc["state"] == "failed"


def test_livez_and_bad_requests() -> None:
    async def go() -> list[bytes]:
        server = StatusServer([one(WarmState())], fake_probe({}))
        port = await server.start("127.0.0.1", 0)
        answers = []
        try:
            for raw in (b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"POST /ready HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                        b"GET /nope HTTP/1.1\r\n\r\n",
                        b"garbage\r\n\r\n",
                        b"HEAD /livez HTTP/1.1\r\n\r\n"):  # fmt: skip
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                await writer.drain()
                answers.append(await reader.read())  # the server closes: read to EOF
                writer.close()
        finally:
            await server.close()
        return answers

    livez, post, nope, garbage, head = asyncio.run(go())
    assert livez.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(livez.split(b"\r\n\r\n", 1)[1]) == {"status": "ok"}
    assert b"Connection: close" in livez
    assert post.startswith(b"HTTP/1.1 405 ")
    assert nope.startswith(b"HTTP/1.1 404 ")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), "HEAD: no body"


def test_metrics_tell_each_replicas_cache_save_and_only_after_one() -> None:
    """The gauge is absent until a save ran (an alert on 0 must not fire while warming), then
    follows the latest save; the counter starts at 0 and keeps every failure."""
    a, b = one(WarmState("passed", "1.0")), one(WarmState("running", "2.0"), B, 'odd"name\\')

    async def go() -> list[httpx.Response]:
        server = StatusServer([a, b], fake_probe({}))  # /metrics never asks the engine
        port = await server.start("127.0.0.1", 0)
        pages = []
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                pages.append(await client.get("/metrics"))
                a.warm.saved(False)
                pages.append(await client.get("/metrics"))
                a.warm.saved(True)
                b.warm.saved(False)
                pages.append(await client.get("/metrics"))
        finally:
            await server.close()
        return pages

    pages = asyncio.run(go())
    for resp in pages:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    fresh, failed, later = (Scrape.parse(r.text) for r in pages)
    assert CACHE_SAVED not in {name for name, _, _ in fresh.samples}
    assert fresh.by_label(CACHE_SAVE_FAILURES, "replica") == {"127.0.0.1:8000": 0.0,
                                                              'odd"name\\': 0.0}  # fmt: skip
    assert failed.by_label(CACHE_SAVED, "replica") == {"127.0.0.1:8000": 0.0}
    assert failed.get(CACHE_SAVE_FAILURES, replica="127.0.0.1:8000") == 1.0
    assert later.by_label(CACHE_SAVED, "replica") == {"127.0.0.1:8000": 1.0, 'odd"name\\': 0.0}
    assert later.by_label(CACHE_SAVE_FAILURES, "replica") == {"127.0.0.1:8000": 1.0,
                                                              'odd"name\\': 1.0}  # fmt: skip


def test_judge_never_calls_an_unknown_instance_passed() -> None:
    assert judge(WarmState("passed", "1.0"), None) == "waiting"
    assert judge(WarmState("passed", "1.0"), "1.0") == "passed"
    assert judge(WarmState("failed", "1.0"), "2.0") == "waiting"


def test_probe_reads_the_engines_instance_and_reports_a_dead_one() -> None:
    engine = FakeEngine()
    with serve(engine.app) as url:
        assert asyncio.run(probe_instance(url)) == engine.instance
    with pytest.raises(EngineDown):
        asyncio.run(probe_instance(url, timeout_s=2))  # the server is gone now
