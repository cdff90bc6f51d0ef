"""Request tracing (OpenTelemetry): one trace per request across the gateway and the engine.

``build(settings)`` is called once at start-up: ``GATEWAY_OTEL_ENDPOINT`` empty gives
``NO_TRACING``, whose every request trace is the shared ``NOOP_TRACE`` (and the SDK is never
imported); set, an ``OtelTracing`` over the SDK. See ``trace.py`` for the spans.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gateway.tracing.base import NOOP_TRACE, Attr, NoTrace, RequestTrace, Step

if TYPE_CHECKING:
    from env.settings import GatewaySettings

__all__ = ["NOOP_TRACE", "NO_TRACING", "Attr", "RequestTrace", "Step", "Tracing", "build"]


class Tracing(Protocol):
    def start(self, route: str, request_id: bytes, key: str, forward: bytes) -> RequestTrace: ...

    def shutdown(self) -> None: ...


class NoTracing:
    """Tracing off."""

    def start(self, route: str, request_id: bytes, key: str, forward: bytes) -> NoTrace:
        return NOOP_TRACE

    def shutdown(self) -> None:
        pass


NO_TRACING = NoTracing()


def build(settings: GatewaySettings) -> Tracing:
    endpoint = settings.otel_endpoint.strip()
    if not endpoint:
        return NO_TRACING
    from gateway.tracing.setup import OtelTracing, exporter

    return OtelTracing(
        exporter(endpoint, settings.otel_protocol),
        settings.otel_sample_ratio,
        attrs={"gateway.routing.policy": settings.routing},
    )
