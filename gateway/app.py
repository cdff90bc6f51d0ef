"""The gateway application: settings -> wired components -> one ASGI callable.

``Gateway`` holds the shared state (policy, admission, health, monitor, upstream clients,
metrics, credentials); ``GatewayApp`` is the ASGI entry: a dict router over exact paths (no
framework middleware on the token path) plus the lifespan that starts and stops the monitor
and the connection pools.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from env.settings import EngineSettings, GatewaySettings, profile_path
from gateway import asgi
from gateway.admission import Admission
from gateway.asgi import Receive, Scope, Send
from gateway.auth import KeyStore, bearer, ensure_token_file, token_matches
from gateway.errors import OpenAIError
from gateway.health import HealthTracker, Snapshot
from gateway.metrics import GatewayMetrics
from gateway.monitor import EngineMonitor
from gateway.saturation import SaturationPolicy
from gateway.tokens import TokenCounter
from gateway.upstream import make_client
from gateway.validation import Policy
from gateway.wire import EnginePool

log = logging.getLogger("gateway")
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
# httpx connections for /tokenize and the passthrough routes (/v1/models ...); the completions
# and the monitor's polls go through ``EnginePool``.
AUX_CONNECTIONS = 16


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


class Gateway:
    """Every shared component, built from the two settings slices."""

    def __init__(
        self, engine: EngineSettings, settings: GatewaySettings, keys: KeyStore, token: str
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.keys = keys
        self.internal_token = token
        self.policy = Policy.from_settings(engine, settings)
        self.upstream_url = (settings.upstream_url or engine.url).rstrip("/")
        self.max_inflight = settings.max_inflight or engine.max_num_seqs
        self.admission = Admission(
            self.max_inflight,
            settings.queue_depth,
            settings.queue_timeout_s,
            settings.per_key_concurrency,
            settings.max_retry_after_s,
        )
        self.health = HealthTracker()
        self.metrics = GatewayMetrics()
        self.pool: EnginePool | None = None
        self.aux: httpx.AsyncClient | None = None
        self.monitor: EngineMonitor | None = None
        self.tokens: TokenCounter | None = None
        self._register_gauges()
        self.health.subscribe(self._on_health)

    # -- lifecycle ---------------------------------------------------------------------------

    async def startup(self) -> None:
        s = self.settings
        self.pool = EnginePool(self.upstream_url, s.connect_timeout_s)
        self.aux = make_client(self.upstream_url, AUX_CONNECTIONS, s.connect_timeout_s, 10.0)
        self.tokens = TokenCounter(self.aux, s.tokenize_timeout_s)
        self.monitor = EngineMonitor(
            self.pool,
            self.health,
            self.admission,
            SaturationPolicy(s.engine_waiting_threshold, s.kv_usage_threshold, s.metrics_max_age_s),
            s.metrics_poll_s,
            s.health_poll_s,
        )
        self.monitor.start()
        log.info(
            "gateway up: upstream %s, in-flight cap %d, queue %d x %gs, auth %s",
            self.upstream_url,
            self.max_inflight,
            s.queue_depth,
            s.queue_timeout_s,
            "open" if self.keys.open else f"{len(self.keys.entries)} keys",
        )

    async def shutdown(self) -> None:
        if self.monitor:
            await self.monitor.stop()
        if self.pool is not None:
            await self.pool.aclose()
        if self.aux is not None:
            await self.aux.aclose()

    # -- shared helpers for routes -----------------------------------------------------------

    def authenticate(self, scope: Scope) -> str:
        """The caller's label, or 401. In open mode every caller is ``anonymous``."""
        token = bearer(scope["headers"])
        caller = self.keys.identify(token)
        if caller is None:
            msg = "missing API key" if token is None else "invalid API key"
            raise OpenAIError(
                401, f"{msg}: send 'Authorization: Bearer <key>'", code="invalid_api_key"
            )
        return caller

    def is_internal(self, scope: Scope) -> bool:
        return token_matches(bearer(scope["headers"]), self.internal_token)

    def unavailable(self, snap: Snapshot) -> OpenAIError:
        """The 503 for a request that arrives while the engine cannot serve."""
        if snap.state == "engine_down":
            return OpenAIError(
                503, "the engine is not reachable; retry later", code="engine_down", retry_after=5
            )
        if snap.state == "warming_up":
            step = f" (step: {snap.step})" if snap.step else ""
            return OpenAIError(
                503, f"the engine is warming up{step}; retry later", code="warming_up",
                retry_after=10,
            )  # fmt: skip
        return OpenAIError(
            503, f"the engine failed its warm-up at step {snap.step}; an operator must act",
            code="warmup_failed", retry_after=30,
        )  # fmt: skip

    def _on_health(self, snap: Snapshot) -> None:
        self.metrics.warmup_state.state(snap.state)
        if snap.state != "ready":
            log.info("serving state: %s (instance %s)", snap.status_text, snap.engine_instance)
        else:
            log.info("serving state: ready (instance %s)", snap.engine_instance)

    def _register_gauges(self) -> None:
        m, adm = self.metrics, self.admission
        m.gauge("gateway_inflight", "Requests currently upstream", lambda: adm.inflight)
        m.gauge("gateway_queue_depth", "Requests waiting for a slot", lambda: adm.queued)
        m.gauge("gateway_inflight_limit", "The in-flight cap", lambda: adm.max_inflight)
        m.gauge(
            "gateway_engine_saturated",
            "1 while admissions are held on the engine's signal (queue, KV, stale metrics)",
            lambda: float(adm.saturated),
        )

        def sample_attr(name: str) -> Callable[[], float]:
            def read() -> float:
                s = self.monitor.sample if self.monitor else None
                return float(getattr(s, name)) if s else math.nan

            return read

        m.gauge("gateway_engine_waiting", "Engine's waiting requests (last sample)",
                sample_attr("waiting"))  # fmt: skip
        m.gauge("gateway_engine_running", "Engine's running requests (last sample)",
                sample_attr("running"))  # fmt: skip
        m.gauge("gateway_engine_kv_usage", "Engine's KV cache usage 0-1 (last sample)",
                sample_attr("kv_usage"))  # fmt: skip
        m.gauge(
            "gateway_engine_metrics_age_seconds",
            "Age of the last engine metrics sample",
            lambda: self.monitor.metrics_age() if self.monitor else math.inf,
        )


class GatewayApp:
    """The ASGI callable: exact-path routing, OpenAI-shaped 404/405, lifespan."""

    def __init__(self, gateway: Gateway) -> None:
        from gateway.routes import build_routes

        self.gateway = gateway
        self.routes: dict[str, dict[str, Handler]] = build_routes(gateway)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            methods = self.routes.get(scope["path"])
            if methods is None:
                err = OpenAIError(404, f"no route {scope['path']}", code="not_found")
                await asgi.send_error(send, err)
                return
            handler = methods.get(scope["method"])
            if handler is None:
                allow = ", ".join(sorted(methods)).encode()
                err = OpenAIError(405, f"method {scope['method']} not allowed", code="bad_method")
                await asgi.send_error(send, err, [(b"allow", allow)])
                return
            await handler(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                with contextlib.suppress(Exception):
                    await self.gateway.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


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
    return GatewayApp(Gateway(engine, settings, keys, token))
