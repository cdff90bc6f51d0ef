"""The routes in-process: the real app (``create_app``) under its own lifespan, driven through
httpx's ASGI transport. No engine listens on the upstream port, so the serving state is
``engine_down``: what is under test is the HTTP translation (auth, statuses, headers, bodies),
not generation (that is ``test_service.py`` and the end-to-end tests)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from env.settings import EngineSettings, GatewaySettings
from gateway.edge.app import GatewayApp, create_app
from gateway.tenancy.auth import hash_key
from protocol.prometheus import metric_sum
from tests.support.process import free_port

pytestmark = pytest.mark.anyio
KEY = "sk-routes-0123456789abcdef"
CHAT = {"model": "gemma-4-tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Lifespan:
    """Runs an ASGI app's lifespan in a task: startup on enter, shutdown on exit."""

    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> GatewayApp:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self.task = asyncio.create_task(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        msg = await asyncio.wait_for(self.outbox.get(), 30)
        assert msg["type"] == "lifespan.startup.complete", msg
        return self.app

    async def __aexit__(self, *exc: object) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        msg = await asyncio.wait_for(self.outbox.get(), 30)
        assert msg["type"] == "lifespan.shutdown.complete"
        await asyncio.wait_for(self.task, 30)


def make_app(tmp_path: Path, keyed: bool) -> GatewayApp:
    settings: dict[str, Any] = {
        "internal_token_file": tmp_path / "token",
        "upstream_url": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "health_poll_s": 0.05,
    }
    if keyed:
        (tmp_path / "keys").write_text(f"{hash_key(KEY)} tester\n")
        settings["api_keys_file"] = tmp_path / "keys"
    return create_app(engine=EngineSettings.load("cpu"), settings=GatewaySettings(**settings))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, GatewayApp]]:
    app = make_app(tmp_path, keyed=True)
    async with Lifespan(app):
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c, app


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_unknown_path_and_wrong_method(client: tuple[httpx.AsyncClient, GatewayApp]) -> None:
    c, _ = client
    r = await c.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await c.get("/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "bad_method"


async def test_livez_and_health_while_the_engine_is_down(
    client: tuple[httpx.AsyncClient, GatewayApp],
) -> None:
    c, _ = client
    assert (await c.get("/livez")).json() == {"status": "ok"}
    r = await c.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "engine_down"
    assert r.headers["retry-after"] == "5"


async def test_completions_need_a_key_then_answer_503_engine_down(
    client: tuple[httpx.AsyncClient, GatewayApp],
) -> None:
    c, _ = client
    r = await c.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "rid-1"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["x-request-id"] == "rid-1"
    r = await c.post("/v1/chat/completions", json=CHAT, headers=auth())
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_down"
    assert r.headers["retry-after"] == "5" and len(r.headers["x-request-id"]) == 24
    r = await c.post("/v1/completions", json={"model": "gemma-4-tiny", "prompt": 5}, headers=auth())
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"  # validated first


async def test_oversized_body_is_413_before_validation(
    client: tuple[httpx.AsyncClient, GatewayApp],
) -> None:
    c, app = client
    assert app.components is not None
    limit = app.components.policy.max_body_bytes
    r = await c.post("/v1/completions", content=b"x" * (limit + 1), headers=auth())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


async def test_metrics_need_a_key_or_the_internal_token(
    client: tuple[httpx.AsyncClient, GatewayApp],
) -> None:
    c, app = client
    assert (await c.get("/metrics")).status_code == 401
    assert (await c.get("/metrics", headers=auth())).status_code == 200
    token = app.config.access.internal_token
    r = await c.get("/metrics", headers=auth(token))
    assert r.status_code == 200
    assert metric_sum(r.text, "gateway_rejections_total", reason="auth") == 1  # the first GET


async def test_the_warmup_handshake_endpoint(client: tuple[httpx.AsyncClient, GatewayApp]) -> None:
    c, app = client
    internal = auth(app.config.access.internal_token)
    assert (await c.get("/internal/warmup")).status_code == 401
    assert (await c.get("/internal/warmup", headers=auth())).status_code == 401  # an API key
    state = (await c.get("/internal/warmup", headers=internal)).json()
    assert state["state"] == "engine_down" and state["engine_instance"] is None
    r = await c.post("/internal/warmup", content=b"[", headers=internal)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    bad = {"engine_instance": "1.0", "status": "done"}
    r = await c.post("/internal/warmup", json=bad, headers=internal)
    assert r.status_code == 400 and r.json()["error"]["param"] == "status"
    stale = {"engine_instance": "1.0", "status": "passed"}
    r = await c.post("/internal/warmup", json=stale, headers=internal)
    assert r.status_code == 409 and r.json()["error"]["code"] == "stale_engine_instance"


async def test_requests_before_startup_are_503_starting(tmp_path: Path) -> None:
    app = make_app(tmp_path, keyed=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        r = await c.get("/health")
    assert r.status_code == 503 and r.json()["error"]["code"] == "starting"


async def test_shutdown_closes_every_part(tmp_path: Path) -> None:
    app = make_app(tmp_path, keyed=False)
    async with Lifespan(app):
        assert app.components is not None
        parts = app.components
        [replica] = parts.replicas.replicas
        assert all(not t.done() for t in replica.monitor._tasks)
    assert app.components is None
    assert all(t.done() for t in replica.monitor._tasks) and replica.control.is_closed


async def test_trailing_slash_and_request_id_on_the_gateways_own_answers(
    client: tuple[httpx.AsyncClient, GatewayApp],
) -> None:
    c, _ = client
    r = await c.post("/v1/chat/completions/", json=CHAT, headers={"X-Request-Id": "abc"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "abc"  # routed, then refused
    for r in (await c.get("/nope", headers={"X-Request-Id": "n1"}),
              await c.put("/v1/models", headers={"X-Request-Id": "n1"}),
              await c.get("/health", headers={"X-Request-Id": "n1"})):  # fmt: skip
        assert r.headers["x-request-id"] == "n1", r.status_code
        assert r.headers["content-type"] == "application/json"


async def test_new_api_routes_exist_and_are_keyed(
    client: tuple[httpx.AsyncClient, GatewayApp],
) -> None:
    c, _ = client
    for method, path in [("POST", "/v1/responses"), ("POST", "/v1/messages"),
                         ("POST", "/v1/messages/count_tokens"), ("GET", "/v1/responses/resp_1"),
                         ("POST", "/v1/responses/resp_1/cancel"), ("GET", "/v1/models/x")]:  # fmt: skip
        r = await c.request(method, path, json={})
        assert r.status_code == 401, (path, r.status_code, r.text)
    r = await c.get("/v1/models/gemma-4-tiny", headers=auth())
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_down"  # asks the engine
    body = {"model": "gemma-4-tiny", "messages": [{"role": "user", "content": "x"}]}
    r = await c.post("/v1/messages", json=body, headers=auth())
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"  # required there


async def test_compressed_bodies(client: tuple[httpx.AsyncClient, GatewayApp]) -> None:
    c, app = client
    assert app.components is not None
    limit = app.components.policy.max_body_bytes
    gz = {"Content-Encoding": "gzip", **auth()}
    r = await c.post("/v1/chat/completions", content=gzip.compress(json.dumps(CHAT).encode()),
                     headers=gz)  # fmt: skip
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_down"  # parsed fine
    bomb = gzip.compress(b"0" * (limit + 1024))  # a few KB that inflate past the limit
    r = await c.post("/v1/chat/completions", content=bomb, headers=gz)
    assert r.status_code == 413 and "decompressed" in r.json()["error"]["message"]
    r = await c.post("/v1/chat/completions", content=b"not gzip at all", headers=gz)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_encoding"
    r = await c.post(
        "/v1/chat/completions", content=b"x", headers={"Content-Encoding": "br", **auth()}
    )
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_encoding"


async def test_an_unexpected_exception_is_a_logged_500_in_openai_shape(
    client: tuple[httpx.AsyncClient, GatewayApp],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    c, _ = client

    def boom(*args: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr("gateway.service.parse", boom)  # on the token path
    monkeypatch.setattr("gateway.routes.health.unavailable", boom)  # on a control route
    r = await c.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "x1", **auth()})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "x1" in r.json()["error"]["message"] and r.headers["x-request-id"] == "x1"
    r = await c.get("/health", headers={"X-Request-Id": "x2"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"] == "x2"
    assert "injected" in caplog.text and "x1" in caplog.text and "x2" in caplog.text
    r = await c.get("/livez")  # and it still serves
    assert r.status_code == 200
