"""The routes: the four generation routes (raw ASGI handlers, built from the live parts) and
the FastAPI routers of everything else, declared once for dispatch and the OpenAPI description.

The generation routes are also declared to FastAPI, with their real request models from
``schema.py``, so ``/openapi.json`` describes them; ``gateway.edge.app.GatewayApp`` sends their
requests straight to the raw handler ahead of FastAPI's middleware (the token path), and the
FastAPI endpoint below is the same handler for a caller that reaches it another way.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.apis import APIS, Api
from gateway.components import Components
from gateway.edge.types import Handler
from gateway.edge.web import Raw
from gateway.routes import engine, health, internal
from gateway.routes.openai import CompletionsRoute


def generation_handlers(c: Components) -> dict[str, Handler]:
    """Path -> the raw ASGI handler of each generation route."""
    limit = c.policy.max_body_bytes
    return {
        api.path: CompletionsRoute(api, c.completions, c.access, c.metrics, limit, c.access_log)
        for api in APIS.values()
    }


def _generation_route(router: APIRouter, api: Api) -> None:
    async def endpoint(request: Request) -> Response:
        return Raw(request.app.generation[api.path])

    endpoint.__name__ = f"generate_{api.kind}"
    extra: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _ref(api)}}},
        },
        "security": [{"apiKey": []}],
    }
    answers: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "the engine's answer: JSON, or an SSE stream with `stream: true`",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
        "4XX": {"description": "OpenAI error JSON"},
        "5XX": {"description": "OpenAI error JSON (a terminal SSE error event once streaming)"},
    }
    router.add_api_route(
        api.path, endpoint, methods=["POST"], summary=api.title,
        openapi_extra=extra, responses=answers, tags=["generation"],
    )  # fmt: skip


def _ref(api: Api) -> str:
    return f"#/components/schemas/{api.schema.__name__}"


def request_schemas() -> dict[str, Any]:
    """The generation request models' JSON Schemas, for ``components/schemas``."""
    out: dict[str, Any] = {}
    for api in APIS.values():
        doc = api.schema.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(doc.pop("$defs", {}))
        out[api.schema.__name__] = doc
    return out


def build_router() -> APIRouter:
    router = APIRouter()
    for api in APIS.values():
        _generation_route(router, api)
    router.include_router(engine.router)
    router.include_router(health.router)
    router.include_router(internal.router)
    return router
