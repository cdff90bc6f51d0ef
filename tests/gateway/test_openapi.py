"""``/openapi.json``: a valid OpenAPI document listing every route, whose generation request
schemas are the ones the gateway enforces (``schema.py``), served only where the profile allows
(``GATEWAY_DOCS``: on for cpu, off on TPU and GPU profiles)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.routing import APIRoute
from openapi_spec_validator import validate

from env.settings import ENV_DIR, EngineSettings, GatewaySettings
from gateway.edge.app import GatewayApp, create_app
from tests.gateway.test_routes import Lifespan
from tests.support.process import free_port

pytestmark = pytest.mark.anyio
CHAT = {"model": "gemma-4-tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}

# Every route of gateway/README.md's table: the description must list each (method, path).
ROUTES = {
    ("post", "/v1/chat/completions"), ("post", "/v1/completions"), ("post", "/v1/responses"),
    ("post", "/v1/messages"), ("get", "/v1/models"), ("get", "/v1/models/{model_id}"),
    ("post", "/tokenize"), ("post", "/detokenize"), ("post", "/v1/messages/count_tokens"),
    ("get", "/v1/responses/{response_id}"), ("post", "/v1/responses/{response_id}/cancel"),
    ("get", "/health"), ("get", "/livez"), ("get", "/metrics"), ("get", "/internal/warmup"),
    ("post", "/internal/warmup"), ("get", "/internal/replicas"),
    ("post", "/internal/replicas/{name}/{action}"),
}  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_app(tmp_path: Path, **settings: Any) -> GatewayApp:
    return create_app(
        engine=EngineSettings.load("cpu"),
        settings=GatewaySettings(
            internal_token_file=tmp_path / "token",
            upstream_url=f"http://127.0.0.1:{free_port()}",  # no engine: validation only
            **settings,
        ),
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(tmp_path, docs=True)
    async with Lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


async def test_the_description_lists_every_route(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    listed = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == ROUTES
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        name = body["schema"]["$ref"].rsplit("/", 1)[1]
        assert name in doc["components"]["schemas"], name
    assert (await client.get("/docs")).status_code == 200


def test_the_description_is_valid_and_derived_from_the_routes(tmp_path: Path) -> None:
    """Derived from the app, not the list above: a route added later cannot be left out (the
    hidden ones only keep old catch-all answers)."""
    app = make_app(tmp_path, docs=True)
    doc = app.openapi()  # what /openapi.json serves
    validate(doc)  # OpenAPI 3.1 (here, outside the event loop: it takes a second or two)
    for route in app.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            for method in route.methods:
                assert method.lower() in doc["paths"][route.path_format], route.path


def _chat_schema(doc: dict[str, Any]) -> jsonschema.Validator:
    wrapper = {"$ref": "#/components/schemas/ChatRequest", "components": doc["components"]}
    return jsonschema.Draft202012Validator(wrapper)


async def test_the_chat_schema_agrees_with_the_gateway(client: httpx.AsyncClient) -> None:
    """A body the gateway accepts (it gets as far as the engine: 503 here) passes the schema; a
    body it refuses (a string max_tokens: 400) fails it."""
    schema = _chat_schema((await client.get("/openapi.json")).json())
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_down"
    assert schema.is_valid(CHAT)
    bad = {**CHAT, "max_tokens": "10"}
    r = await client.post("/v1/chat/completions", json=bad)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert not schema.is_valid(bad)
    robot = {**CHAT, "messages": [{"role": "robot", "content": "x"}]}
    r = await client.post("/v1/chat/completions", json=robot)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    assert not schema.is_valid(robot)


async def test_docs_are_off_by_default(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with Lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            for path in ("/openapi.json", "/docs"):
                r = await c.get(path)
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_docs_are_on_for_cpu_and_off_on_tpu_and_gpu_profiles() -> None:
    assert GatewaySettings.load(ENV_DIR / "cpu.env").docs
    accelerators = sorted(ENV_DIR.glob("v6e*.env")) + sorted(ENV_DIR.glob("gpu*.env"))
    assert accelerators
    for profile in accelerators:
        assert not GatewaySettings.load(profile).docs, profile.name
