"""``/health`` (enough replicas up AND warmed for their instance), ``/livez`` (process),
``/metrics``."""

from __future__ import annotations

from gateway.asgi import send_bytes, send_error, send_json
from gateway.auth import Access
from gateway.errors import OpenAIError
from gateway.health import unavailable
from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.replicas import ReplicaSet
from gateway.types import Receive, Scope, Send


class Health:
    def __init__(self, replicas: ReplicaSet, metrics: GatewayMetrics) -> None:
        self.replicas = replicas
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        snap = self.replicas.health()
        body = {"status": snap.status_text, **snap.as_dict(), **self.replicas.describe()}
        if snap.ready:
            await send_json(send, 200, body)
            self.metrics.request("health", 200)
            return
        retry = unavailable(snap).retry_after
        await send_json(send, 503, body, [(b"retry-after", str(retry).encode())])
        self.metrics.request("health", 503)


async def livez(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, {"status": "ok"})


class Metrics:
    """Prometheus text, for whoever ``Access.may_scrape`` lets in."""

    def __init__(self, access: Access, metrics: GatewayMetrics) -> None:
        self.access = access
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.access.may_scrape(scope["headers"]):
            self.metrics.reject("auth")
            err = OpenAIError(
                401,
                "metrics need an API key or the internal token (or GATEWAY_METRICS_PUBLIC=true)",
                code="invalid_api_key",
            )
            await send_error(send, err)
            return
        await send_bytes(send, 200, self.metrics.render(), CONTENT_TYPE)
