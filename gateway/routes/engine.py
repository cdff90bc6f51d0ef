"""The engine's utility routes, passed through with the caller's key checked: ``/v1/models``,
``/tokenize``, ``/detokenize``, ``/v1/messages/count_tokens``, the stored responses
(``/v1/responses/{id}``, ``.../cancel``), and ``/v1/models/{id}``, which the engine lacks (picked
from its ``/v1/models`` list). An engine error is re-shaped to OpenAI's conventions.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from gateway.components import Components
from gateway.edge.asgi import JSON, ClientGone, read_body
from gateway.edge.web import (
    ORIGINAL_PATH,
    Answer,
    ApiKey,
    Nothing,
    Parts,
    count_refusal,
    json_answer,
)
from gateway.errors import OpenAIError, reshape_engine_error
from gateway.upstream.relay import upstream_error
from protocol.engine_errors import engine_message

router = APIRouter(tags=["engine"])


async def forward(request: Request, c: Components, route: str, path: str | None = None) -> Response:
    """One passthrough: the body (POST, within the body limit), the engine's answer as is, its
    errors in OpenAI's shape. ``path=None``: the request's own path and query."""
    rid = request.scope["gateway.request_id"]
    try:
        body = b""
        if request.method == "POST":
            body = await read_body(request.scope, request.receive, c.policy.max_body_bytes)
        try:
            r = await c.replicas.control().request(
                request.method, path or _path_and_query(request), content=body or None,
                headers={"content-type": "application/json", "x-request-id": rid.decode()},
                timeout=c.config.settings.tokenize_timeout_s,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise upstream_error(exc) from None
    except OpenAIError as err:
        count_refusal(c.metrics, route, err)
        raise
    except ClientGone:
        return Nothing()
    c.metrics.request(route, r.status_code)
    ctype = r.headers.get("content-type", "application/json").encode()
    content = r.content
    if r.status_code >= 400:
        content, ctype = reshape_engine_error(r.status_code, content), JSON
    return Answer(r.status_code, content, ctype)


def _path_and_query(request: Request) -> str:
    query = request.scope.get("query_string") or b""
    path = request.scope.get(ORIGINAL_PATH, request.scope["path"])
    return path + ("?" + query.decode("latin-1") if query else "")


@router.get("/v1/models", summary="The served models", dependencies=[Depends(ApiKey("models"))])
async def models(request: Request, c: Parts) -> Response:
    return await forward(request, c, "models", "/v1/models")


@router.get("/v1/models/{model_id:path}", summary="One served model",
            dependencies=[Depends(ApiKey("models"))])  # fmt: skip
async def model(
    model_id: Annotated[str, Path(description="a model id of /v1/models")],
    c: Parts,
) -> Response:
    try:
        try:
            r = await c.replicas.control().get(
                "/v1/models", timeout=c.config.settings.tokenize_timeout_s
            )
            found = r.json().get("data", []) if r.status_code == 200 else None
        except httpx.HTTPError as exc:
            raise upstream_error(exc) from None
        except ValueError:
            raise OpenAIError(
                502, "bad /v1/models answer from the engine", code="engine_error"
            ) from None
        if found is None:
            raise OpenAIError(r.status_code, engine_message(r.content), code="engine_error")
        entry = next((m for m in found if m.get("id") == model_id), None)
        if entry is None:
            raise OpenAIError(404, f"the model '{model_id}' does not exist on this server",
                              code="model_not_found", param="model")  # fmt: skip
    except OpenAIError as err:
        count_refusal(c.metrics, "models", err)
        raise
    c.metrics.request("models", 200)
    return json_answer(200, entry)


@router.post("/tokenize", summary="The engine's tokenizer",
             dependencies=[Depends(ApiKey("tokenize"))])  # fmt: skip
async def tokenize(request: Request, c: Parts) -> Response:
    return await forward(request, c, "tokenize", "/tokenize")


@router.post("/detokenize", summary="The engine's detokenizer",
             dependencies=[Depends(ApiKey("detokenize"))])  # fmt: skip
async def detokenize(request: Request, c: Parts) -> Response:
    return await forward(request, c, "detokenize", "/detokenize")


@router.post("/v1/messages/count_tokens", summary="Anthropic Messages: count a request's tokens",
             dependencies=[Depends(ApiKey("count_tokens"))])  # fmt: skip
async def count_tokens(request: Request, c: Parts) -> Response:
    return await forward(request, c, "count_tokens")


@router.get("/v1/responses/{response_id:path}", summary="A stored response (Responses API)",
            dependencies=[Depends(ApiKey("responses_get"))])  # fmt: skip
async def response_get(
    request: Request,
    response_id: Annotated[str, Path(description="the response's id")],
    c: Parts,
) -> Response:
    return await forward(request, c, "responses_get")


@router.post("/v1/responses/{response_id}/cancel", summary="Cancel a background response",
             dependencies=[Depends(ApiKey("responses_cancel"))])  # fmt: skip
async def response_cancel(
    request: Request,
    response_id: Annotated[str, Path(description="the response's id")],
    c: Parts,
) -> Response:
    return await forward(request, c, "responses_cancel")


@router.post("/v1/responses/{rest:path}", include_in_schema=False,
             dependencies=[Depends(ApiKey("responses_cancel"))])  # fmt: skip
async def response_other(request: Request, c: Parts) -> Response:
    """Any other POST under a stored response: the engine's to answer (as it always was)."""
    return await forward(request, c, "responses_cancel")
