"""``/health`` (engine up AND warmed for this instance), ``/livez`` (process), ``/metrics``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.asgi import Receive, Scope, Send, send_bytes, send_error, send_json
from gateway.auth import bearer
from gateway.errors import OpenAIError
from gateway.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from gateway.app import Gateway


async def health(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    snap = gw.health.snapshot()
    body = {"status": snap.status_text, **snap.as_dict()}
    if snap.ready:
        await send_json(send, 200, body)
        gw.metrics.request("health", 200)
        return
    retry = gw.unavailable(snap).retry_after
    await send_json(send, 503, body, [(b"retry-after", str(retry).encode())])
    gw.metrics.request("health", 503)


async def livez(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, {"status": "ok"})


async def metrics(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """Prometheus text: public only if configured, else an API key or the internal token.

    An open gateway (cpu, no keys) has no API keys to check, so there only the internal token
    (Prometheus' ``bearer_token_file``) opens it.
    """
    allowed = (
        gw.settings.metrics_public
        or gw.is_internal(scope)
        or (not gw.keys.open and gw.keys.identify(bearer(scope["headers"])) is not None)
    )
    if not allowed:
        gw.metrics.reject("auth")
        err = OpenAIError(
            401, "metrics need an API key or the internal token (or GATEWAY_METRICS_PUBLIC=true)",
            code="invalid_api_key",
        )  # fmt: skip
        await send_error(send, err)
        return
    await send_bytes(send, 200, gw.metrics.render(), CONTENT_TYPE)
