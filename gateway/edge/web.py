"""FastAPI's side of the HTTP edge: the gateway's answers as Starlette responses, the one
exception handler, and the dependencies (live parts, API key, internal token).

Why one exception handler: every answer the gateway makes itself is OpenAI error JSON, so a
refusal is raised as an ``OpenAIError`` wherever it is found (a dependency, a route, the body
reader) and rendered here, once. What FastAPI and Starlette raise on their own (no route: 404,
wrong method: 405, a typed parameter that does not parse: 422, anything unexpected: 500) is
translated to an ``OpenAIError`` first, so that clients see one shape whatever refused them.

Why ``Answer`` rather than ``JSONResponse``: the header list and the JSON spacing are the ones
the raw token path sends (``asgi.send_bytes``), byte for byte, so a client cannot tell which
side of the app answered.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from gateway.components import Components
from gateway.edge.asgi import JSON
from gateway.edge.types import Handler, Headers, Receive, Scope, Send
from gateway.errors import OpenAIError, internal_error
from gateway.metrics import GatewayMetrics, rejection_reason
from gateway.tenancy.tenants import Tenant

log = logging.getLogger("gateway")

# Scope keys the app sets before FastAPI sees a request (``gateway.edge.app.GatewayApp``).
REQUEST_ID = "gateway.request_id"
ORIGINAL_PATH = "gateway.path"  # the path as sent, when a trailing slash was dropped to route it


class Answer(Response):
    """A complete answer with exactly the gateway's headers: content-type, content-length,
    then the extras in order (as ``asgi.send_bytes``)."""

    def __init__(
        self, status: int, body: bytes, content_type: bytes = JSON, headers: Headers | None = None
    ) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        self.raw_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *(headers or ()),
        ]


def json_answer(status: int, data: Any, headers: Headers | None = None) -> Answer:
    return Answer(status, json.dumps(data).encode(), JSON, headers)


def error_answer(err: OpenAIError, headers: Headers | None = None) -> Answer:
    return Answer(err.status, err.body(), JSON, err.header_list() + list(headers or ()))


class Raw(Response):
    """Hands the request to a raw ASGI handler (a generation route: it streams)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


class Nothing(Response):
    """No answer: the client is gone (uvicorn would drop it anyway)."""

    def __init__(self) -> None:
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


def _request_id(request: Request) -> bytes:
    rid = request.scope.get(REQUEST_ID)
    return rid if isinstance(rid, bytes) else b"-"


def _allowed(request: Request) -> str:
    """The methods some route serves at this path (the ``Allow`` of a 405)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": ""})
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    methods.discard("HEAD")
    return ", ".join(sorted(methods))


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = f"'{param}' {first.get('msg', 'is invalid')}" if param else str(exc)
    return OpenAIError(400, message, code="invalid_value", param=param)


def as_openai_error(request: Request, exc: Exception) -> OpenAIError:
    """Whatever was raised, as the ``OpenAIError`` to answer with."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            path = request.scope.get(ORIGINAL_PATH, request.scope["path"])
            return OpenAIError(404, f"no route {path}", code="not_found")
        if exc.status_code == 405:
            err = OpenAIError(405, f"method {request.method} not allowed", code="bad_method")
            err.headers["allow"] = _allowed(request)
            return err
        return OpenAIError(exc.status_code, str(exc.detail))
    return internal_error(_request_id(request))


async def render_error(request: Request, exc: Exception) -> Response:
    """The one exception handler (registered for ``OpenAIError``, Starlette's
    ``HTTPException``, ``RequestValidationError`` and ``Exception``)."""
    return error_answer(as_openai_error(request, exc))


# --- dependencies ---------------------------------------------------------------------------

# Declared for the OpenAPI description (the two bearer schemes); the check itself reads the raw
# header exactly as the token path does (``auth.bearer``).
_API_KEY = HTTPBearer(
    auto_error=False, scheme_name="apiKey", description="a client key (GATEWAY_API_KEYS_FILE)"
)
_INTERNAL = HTTPBearer(
    auto_error=False,
    scheme_name="internalToken",
    description="the internal token (GATEWAY_INTERNAL_TOKEN_FILE)",
)


def parts(request: Request) -> Components:
    """The live parts (``GatewayApp`` answers 503 before startup, so they are always there)."""
    components: Components = request.app.components
    return components


Parts = Annotated[Components, Depends(parts)]
_ApiKeyScheme = Annotated[HTTPAuthorizationCredentials | None, Depends(_API_KEY)]
_InternalScheme = Annotated[HTTPAuthorizationCredentials | None, Depends(_INTERNAL)]


def count_refusal(metrics: GatewayMetrics, route: str, err: OpenAIError) -> None:
    """A refused call to an engine passthrough route, as the metrics have always counted it."""
    metrics.reject(rejection_reason(err))
    metrics.request(route, err.status)


class ApiKey:
    """Dependency: the caller's tenant (``auth.Access.authenticate``), or a 401 counted on
    ``route``."""

    def __init__(self, route: str) -> None:
        self.route = route

    def __call__(
        self,
        request: Request,
        c: Parts,
        _: _ApiKeyScheme,
    ) -> Tenant:
        try:
            return c.access.authenticate(request.scope["headers"])
        except OpenAIError as err:
            count_refusal(c.metrics, self.route, err)
            raise


def internal_token(
    request: Request,
    c: Parts,
    _: _InternalScheme,
) -> None:
    """Dependency of the ``/internal/*`` routes: the internal token, or a 401."""
    if not c.access.is_internal(request.scope["headers"]):
        c.metrics.reject("auth")
        raise OpenAIError(401, "internal endpoint: bearer internal token required",
                          code="invalid_internal_token")  # fmt: skip


def scraper(
    request: Request,
    c: Parts,
    _: _ApiKeyScheme,
) -> None:
    """Dependency of ``/metrics``: whoever ``Access.may_scrape`` lets in, or a 401."""
    if not c.access.may_scrape(request.scope["headers"]):
        c.metrics.reject("auth")
        raise OpenAIError(
            401,
            "metrics need an API key or the internal token (or GATEWAY_METRICS_PUBLIC=true)",
            code="invalid_api_key",
        )
