"""The gateway application: settings -> ``GatewayConfig`` -> one FastAPI application.

``create_app`` checks the configuration (keys, internal token) without an event loop and
refuses with one clear ``ConfigError``. ``GatewayApp`` is a FastAPI application: its lifespan
is ``components.running`` (every part built, or startup fails), its routes are declared in
``gateway/routes`` (typed parameters, dependencies for the API key and the internal token), one
exception handler (``gateway/edge/web.py``) renders every refusal in OpenAI's shape, and
``/docs`` + ``/openapi.json`` describe every route where the profile allows it
(``GATEWAY_DOCS``). The token path (a POST to a generation route) is dispatched to its raw ASGI
handler ahead of FastAPI's middleware: see ``GatewayApp.__call__`` and gateway/README.md for
the measurement behind that.

The path of one completion request, file by file: ``edge/app.py`` (dispatch) ->
``routes/openai.py`` (caller, body, ``AsgiSink``) -> ``service.py`` (``request/validation.py``
+ ``request/schema.py``, ``replicas/health.py``, ``request/tokens.py``, the
``admission/core.py`` slot, ``upstream/wire.py``) -> ``upstream/relay.py`` (relay) -> back out
through the sink (gateway/README.md, "Layout", maps the folders).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from env.replicas import UpstreamError
from env.settings import EngineSettings, GatewaySettings, PriceSettings, profile_path
from gateway.components import Components, GatewayConfig, running
from gateway.edge import asgi
from gateway.edge.types import Handler, Message, Receive, Scope, Send
from gateway.edge.web import ORIGINAL_PATH, REQUEST_ID, render_error
from gateway.errors import OpenAIError, internal_error
from gateway.routes import build_router, generation_handlers, request_schemas
from gateway.state.url import StateUrlError
from gateway.tenancy.auth import Access, KeyStore, ensure_token_file

log = logging.getLogger("gateway")


class ConfigError(Exception):
    """The gateway refuses to start (one clear line)."""


def load_keys(engine: EngineSettings, settings: GatewaySettings) -> KeyStore:
    """API keys, or an open gateway on the cpu profile only (with a loud warning)."""
    path = settings.api_keys_file
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"GATEWAY_API_KEYS_FILE={path}: no such file")
        try:
            return KeyStore.from_file(Path(path))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if engine.platform != "cpu":
        raise ConfigError(
            f"refusing to start: the {engine.platform} profile requires API keys "
            "(set GATEWAY_API_KEYS_FILE to a file with one key or sha256:<hex> per line)"
        )
    log.warning("no GATEWAY_API_KEYS_FILE: the gateway is OPEN to anyone who can reach it")
    return KeyStore()


class GatewayApp(FastAPI):
    """The ASGI callable: FastAPI for every route but the token path.

    Before FastAPI sees a request, ``__call__`` does what every answer needs and the raw token
    path must not pay for twice: a POST to one of the four generation paths goes straight to its
    raw ASGI handler (which answers its own request id and errors, with the stream's framing);
    anything else gets its request id, a trailing slash dropped for routing (a trailing slash is
    the same route), ``X-Request-Id`` on the answer, and an unexpected exception logged once.
    Serves HTTP only between lifespan startup and shutdown (503 ``starting`` before).
    """

    def __init__(self, config: GatewayConfig, *, docs: bool = False) -> None:
        super().__init__(
            title="Gemma 4 gateway",
            summary="OpenAI-compatible (and Anthropic Messages) gateway in front of vLLM",
            version=_version(),
            lifespan=self._lifespan,
            docs_url="/docs" if docs else None,
            openapi_url="/openapi.json" if docs else None,
            redoc_url=None,
            redirect_slashes=False,
        )
        self.config = config
        self.components: Components | None = None  # set for the lifespan's duration
        self.generation: dict[str, Handler] = {}  # path -> raw handler, set at startup
        self.raw_token_path = True  # False: generation requests go through FastAPI too
        self.include_router(build_router())
        for exc in (OpenAIError, HTTPException, RequestValidationError, Exception):
            self.add_exception_handler(exc, render_error)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's description, plus the generation routes' request models
        (``request/schema.py``), which their endpoints do not parse (the gateway's own validation
        does)."""
        if self.openapi_schema is None:
            doc = super().openapi()
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(request_schemas())
            for ops in doc["paths"].values():  # a bad parameter is a 400 in OpenAI's shape
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
        return super().openapi()

    def begin_drain(self) -> bool:
        """SIGTERM (``gateway.edge.drain``): take no new requests, finish the ones held."""
        if self.components is None:
            return False
        self.components.replicas.begin_drain()
        return True

    def outstanding(self) -> int:
        c = self.components
        return 0 if c is None else c.admission.inflight + c.admission.queued

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if self.components is None:
            err = OpenAIError(503, "the gateway is starting", code="starting", retry_after=1)
            await asgi.send_error(send, err)
            return
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/", ORIGINAL_PATH: path}
        handler = self.generation.get(scope["path"]) if self.raw_token_path else None
        if handler is not None and scope["method"] == "POST":
            await handler(scope, receive, send)
            return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI with the request id on the answer and one log line for a crash (the one
        exception handler has answered it: Starlette re-raises after answering a 500)."""
        rid = asgi.request_id(scope)
        scope[REQUEST_ID] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                if not any(k == b"x-request-id" for k, _ in headers):
                    message = {**message, "headers": [*headers, (b"x-request-id", rid)]}
            await send(message)

        try:
            await super().__call__(scope, receive, send_with_id)
        except Exception:
            log.exception("unexpected error on %s (request %s)", scope["path"], rid.decode())
            if not started:
                await asgi.send_error(send, internal_error(rid), [(b"x-request-id", rid)])

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """``components.running``: every part built, or startup fails; closed in reverse. A
        failure while closing is logged, not raised: the process is exiting either way."""
        started = False
        try:
            async with running(self.config) as components:
                self.components = components
                self.generation = generation_handlers(components)
                # Everything built so far lives as long as the process (FastAPI's routes and
                # models, pydantic's validators, the parts): out of the collector's sight, so a
                # full collection under a burst does not walk them (+30% CPU per request at 256
                # simultaneous arrivals without this; gateway/README.md, the token path).
                gc.freeze()
                started = True
                try:
                    yield
                finally:
                    self.generation = {}
                    self.components = None
        except Exception:
            if not started:
                raise
            log.exception("gateway shutdown failed")


def _version() -> str:
    try:
        return importlib.metadata.version("gemma4-serving")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def create_app(
    profile: str | os.PathLike[str] | None = None,
    *,
    engine: EngineSettings | None = None,
    settings: GatewaySettings | None = None,
) -> GatewayApp:
    """Build the app from a profile (or explicit slices). Raises ``ConfigError`` to refuse."""
    path = profile_path(profile)
    engine = engine or EngineSettings.load(path)
    settings = settings or GatewaySettings.load(path)
    keys = load_keys(engine, settings)
    try:
        token = ensure_token_file(settings.internal_token_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"GATEWAY_INTERNAL_TOKEN_FILE: {exc}") from None
    access = Access(keys, token, settings.metrics_public)
    try:
        price = PriceSettings.load(path).price_per_hour_usd  # the one price (ops, bench too)
        config = GatewayConfig.build(engine, settings, access, price)
    except UpstreamError as exc:
        raise ConfigError("; ".join(exc.problems)) from None
    except StateUrlError as exc:
        raise ConfigError(str(exc)) from None
    return GatewayApp(config, docs=settings.docs)
