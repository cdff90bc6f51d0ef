"""The gateway application: settings -> ``GatewayConfig`` -> one ASGI callable.

``create_app`` checks the configuration (keys, internal token) without an event loop and
refuses with one clear ``ConfigError``. ``GatewayApp`` is the ASGI entry: its lifespan runs
``components.running`` (every part built, or startup fails) and builds the route table from the
live parts; requests are then dispatched by a dict over exact paths (no framework middleware on
the token path), with OpenAI-shaped 404/405.

The path of one completion request, file by file: ``app.py`` (dispatch) ->
``routes/openai.py`` (caller, body, ``AsgiSink``) -> ``service.py`` (``validation.py`` +
``schema.py``, ``health.py``, ``tokens.py``, ``admission.py`` slot, ``wire.py``) ->
``upstream.py`` (relay) -> back out through the sink.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from env.replicas import UpstreamError
from env.settings import EngineSettings, GatewaySettings, profile_path
from gateway import asgi
from gateway.auth import Access, KeyStore, ensure_token_file
from gateway.components import Components, GatewayConfig, running
from gateway.errors import OpenAIError, internal_error
from gateway.routes import Routes, build_routes
from gateway.types import Handler, Message, Receive, Scope, Send

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


class Router:
    """Path -> method -> handler: exact paths first (the token path: one dict lookup), then a
    trailing slash dropped, then the few ``/prefix/{id}`` routes. OpenAI-shaped 404 and 405
    (with ``Allow``), and an unexpected exception in a handler becomes a logged 500 in OpenAI
    shape (the completion routes answer their own, with the stream's framing)."""

    def __init__(self, routes: Routes) -> None:
        self.exact = routes.exact
        self.prefixed = routes.prefixed
        self.guarded = routes.guarded

    def match(self, path: str) -> dict[str, Handler] | None:
        methods = self.exact.get(path)
        if methods is None and len(path) > 1 and path.endswith("/"):
            methods = self.exact.get(path.rstrip("/"))
        if methods is None:
            for prefix, prefixed in self.prefixed:
                if path.startswith(prefix) and len(path) > len(prefix):
                    return prefixed
        return methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self.match(scope["path"])
        handler = methods.get(scope["method"]) if methods is not None else None
        if handler in self.guarded:  # the token path: its route owns request id and errors
            await handler(scope, receive, send)  # type: ignore[misc]
            return
        rid = [(b"x-request-id", asgi.request_id(scope))]
        if methods is None:
            err = OpenAIError(404, f"no route {scope['path']}", code="not_found")
            await asgi.send_error(send, err, rid)
        elif handler is None:
            allow = ", ".join(sorted(methods)).encode()
            err = OpenAIError(405, f"method {scope['method']} not allowed", code="bad_method")
            await asgi.send_error(send, err, [(b"allow", allow), *rid])
        else:
            await _guarded(handler, scope, receive, send, rid)


async def _guarded(
    handler: Handler, scope: Scope, receive: Receive, send: Send, rid: list[tuple[bytes, bytes]]
) -> None:
    """Run a control route with the request id on its answer and a 500 for a crash."""
    started = False

    async def send_with_id(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
            headers = list(message.get("headers", ()))
            if not any(k == b"x-request-id" for k, _ in headers):
                message = {**message, "headers": headers + rid}
        await send(message)

    try:
        await handler(scope, receive, send_with_id)
    except Exception:
        log.exception("unexpected error on %s (request %s)", scope["path"], rid[0][1].decode())
        if not started:
            await asgi.send_error(send, internal_error(rid[0][1]), rid)


class GatewayApp:
    """The ASGI callable. Serves HTTP only between lifespan startup and shutdown."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.components: Components | None = None  # set for the lifespan's duration (tests read it)
        self._router: Router | None = None

    def begin_drain(self) -> bool:
        """SIGTERM (``gateway.drain``): take no new requests, finish the ones held."""
        if self.components is None:
            return False
        self.components.replicas.begin_drain()
        return True

    def outstanding(self) -> int:
        c = self.components
        return 0 if c is None else c.admission.inflight + c.admission.queued

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._router is None:
                err = OpenAIError(503, "the gateway is starting", code="starting", retry_after=1)
                await asgi.send_error(send, err)
                return
            await self._router(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    self.components = await stack.enter_async_context(running(self.config))
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self._router = Router(build_routes(self.components))
                await send({"type": "lifespan.startup.complete"})
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
                self._router = None
        except Exception:
            log.exception("gateway shutdown failed")
        finally:
            self.components = None
        await send({"type": "lifespan.shutdown.complete"})


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
        config = GatewayConfig.build(engine, settings, access)
    except UpstreamError as exc:
        raise ConfigError("; ".join(exc.problems)) from None
    return GatewayApp(config)
