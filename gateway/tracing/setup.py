"""The OpenTelemetry SDK behind ``GATEWAY_OTEL_*``: a tracer provider, a sampler, an exporter.

Imported only when ``GATEWAY_OTEL_ENDPOINT`` is set: a gateway without tracing never loads the
SDK (its ``start`` returns the shared no-op trace). Sampling is parent-based: a request whose
caller sent a sampled ``traceparent`` is traced, one whose caller decided not to sample is not,
and a request with no caller context is sampled at ``GATEWAY_OTEL_SAMPLE_RATIO``. Spans leave in
batches from the SDK's own thread, never on the request path.
"""

from __future__ import annotations

from typing import Literal

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from gateway.tracing.trace import SpanTrace

Protocol = Literal["http/protobuf", "grpc"]
SERVICE = "gemma4-gateway"


def exporter(endpoint: str, protocol: Protocol) -> SpanExporter:
    """OTLP over HTTP (``endpoint`` is the full URL, ``.../v1/traces``) or gRPC (host:port)."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=endpoint)


class OtelTracing:
    """Tracing on: one ``SpanTrace`` per request, exported over OTLP."""

    def __init__(
        self,
        exporter: SpanExporter,
        ratio: float,
        schedule_delay_ms: int = 1000,
        attrs: dict[str, str] | None = None,
        batch: bool = True,
    ) -> None:
        """``batch``: export from the SDK's thread in batches (False: at each span's end, for
        tests)."""
        self.attrs = attrs or {}  # on every route span (e.g. the routing policy)
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(ratio)),
            resource=Resource.create({"service.name": SERVICE}),
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms)
            if batch
            else SimpleSpanProcessor(exporter)
        )
        self.tracer = self.provider.get_tracer("gateway")

    def start(self, route: str, request_id: bytes, key: str, forward: bytes) -> SpanTrace:
        attrs = {"http.route": route, "gateway.request_id": request_id.decode("latin-1"),
                 "gateway.key": key, **self.attrs}  # fmt: skip
        return SpanTrace(self.tracer, f"POST {route}", forward, attrs)

    def shutdown(self) -> None:
        """Flush what is batched and stop the exporter (the gateway's shutdown)."""
        self.provider.shutdown()
