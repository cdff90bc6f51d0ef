"""One request's trace over OpenTelemetry: the spans the completion service opens.

The service asks ``call.trace`` for a span around each step it takes (validation, token count,
queue wait, admission, routing, every upstream attempt, the relay). Spans are started with
explicit parents (never the process-wide "current span" context variable), so concurrent requests on one event loop cannot adopt each other's spans.
The trace context sent to the engine is the upstream-attempt span's: vLLM's own spans (its
``llm_request`` span) become children of the attempt that carried the request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.tracing.base import Attr, Step

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_LINES = (b"traceparent:", b"tracestate:")


class SpanStep:
    """A live span as a ``Step``."""

    __slots__ = ("span",)
    recording = True

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def set(self, key: str, value: Attr) -> None:
        self.span.set_attribute(key, value)

    def error(self, what: BaseException | str) -> None:
        text = what if isinstance(what, str) else f"{type(what).__name__}: {what}"
        self.span.set_status(Status(StatusCode.ERROR, text))
        self.span.set_attribute("error.type", text.split(":", 1)[0])

    def forward(self, lines: bytes) -> bytes:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self.span))
        kept = b"".join(
            line + b"\r\n"
            for line in lines.split(b"\r\n")
            if line and not line.lower().startswith(_TRACE_LINES)
        )
        return kept + b"".join(f"{k}: {v}\r\n".encode() for k, v in carrier.items())


def parent_context(forward: bytes) -> Context | None:
    """The caller's trace context from the header lines the route kept (``traceparent``)."""
    if not forward:
        return None
    carrier: dict[str, str] = {}
    for line in forward.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            carrier[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return _PROPAGATOR.extract(carrier) if carrier else None


class SpanTrace:
    """Tracing on: a server span for the route, the steps as its children."""

    __slots__ = ("_attempt", "_ctx", "_tracer", "root")

    def __init__(
        self, tracer: trace.Tracer, name: str, forward: bytes, attrs: Mapping[str, Attr]
    ) -> None:
        self._tracer = tracer
        self.root = tracer.start_span(
            name, context=parent_context(forward), kind=SpanKind.SERVER, attributes=attrs
        )
        self._ctx = trace.set_span_in_context(self.root)
        self._attempt: Context | None = None  # the relay's parent

    @contextmanager
    def _span(
        self, name: str, ctx: Context, kind: SpanKind = SpanKind.INTERNAL, **attrs: Any
    ) -> Iterator[SpanStep]:
        span = self._tracer.start_span(name, context=ctx, kind=kind, attributes=attrs)
        step = SpanStep(span)
        try:
            yield step
        except BaseException as exc:
            step.error(exc)
            raise
        finally:
            span.end()

    def step(self, name: str) -> AbstractContextManager[Step]:
        return self._span(name, self._ctx)

    @contextmanager
    def attempt(self, replica: str, number: int, reason: str) -> Iterator[Step]:
        attrs = {"gateway.replica": replica, "gateway.attempt": number,
                 "gateway.attempt.reason": reason}  # fmt: skip
        with self._span("upstream attempt", self._ctx, SpanKind.CLIENT, **attrs) as step:
            self._attempt = trace.set_span_in_context(step.span)
            yield step

    @property
    def recording(self) -> bool:
        return self.root.is_recording()

    def relayed(self, seconds: float, attrs: dict[str, Attr]) -> None:
        self._past("relay", self._attempt or self._ctx, seconds, attrs)

    def done(self, name: str, seconds: float, attrs: dict[str, Attr]) -> None:
        self._past(name, self._ctx, seconds, attrs)

    def _past(self, name: str, ctx: Context, seconds: float, attrs: dict[str, Attr]) -> None:
        end = time.time_ns()
        span = self._tracer.start_span(
            name, context=ctx, attributes=attrs, start_time=end - int(seconds * 1e9)
        )
        span.end(end_time=end)

    def end(self, status: int) -> None:
        self.root.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.root.set_status(Status(StatusCode.ERROR, str(status)))
        self.root.end()
