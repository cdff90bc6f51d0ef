"""Request traces without an engine: the spans, their parents, the context sent upstream.

The SDK's in-memory exporter stands in for the OTLP one (the real export is
``test_tracing_e2e.py``); the service is driven through ``tests/gateway/test_service.py``'s
fakes where a whole request is needed.
"""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from env.settings import GatewaySettings
from gateway import tracing
from gateway.tracing import NO_TRACING, NOOP_TRACE
from gateway.tracing.setup import OtelTracing
from gateway.tracing.trace import parent_context

CALLER = b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"


@pytest.fixture
def spans() -> tuple[OtelTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return OtelTracing(
        exporter, 1.0, attrs={"gateway.routing.policy": "prefix"}, batch=False
    ), exporter


def test_off_is_the_shared_noop() -> None:
    assert tracing.build(GatewaySettings()) is NO_TRACING
    trace = NO_TRACING.start("/v1/chat/completions", b"r1", "k", CALLER)
    assert trace is NOOP_TRACE and not trace.recording
    with trace.attempt("a:1", 1, "first") as at, trace.step("validate") as step:
        assert at.forward(CALLER) == CALLER  # the caller's context passes on untouched
        assert not step.recording


def test_parent_context_reads_the_forwarded_lines() -> None:
    from opentelemetry import trace

    ctx = parent_context(b"x-other: 1\r\n" + CALLER)
    sc = trace.get_current_span(ctx).get_span_context()
    assert f"{sc.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{sc.span_id:016x}" == "00f067aa0ba902b7" and sc.is_remote
    assert parent_context(b"") is None


def test_a_request_trace_continues_the_caller(spans) -> None:
    t, exporter = spans
    trace = t.start("/v1/chat/completions", b"r1", "team-a", CALLER + b"tracestate: a=b\r\n")
    with trace.step("validate"):
        pass
    trace.done("queue wait", 0.25, {"gateway.queue.position": 3})
    with trace.attempt("a:1", 1, "first") as first:
        first.error(ConnectionResetError("reset"))
    with trace.attempt("b:2", 2, "failover") as second:
        sent = second.forward(b"x-request-id: r1\r\n" + CALLER + b"tracestate: a=b\r\n")
        trace.relayed(0.5, {"gateway.relay.chunks": 7})
    trace.end(200)
    got = {s.name: s for s in exporter.get_finished_spans() if s.name != "upstream attempt"}
    attempts = [s for s in exporter.get_finished_spans() if s.name == "upstream attempt"]
    root = got["POST /v1/chat/completions"]
    assert f"{root.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{root.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert root.attributes["gateway.key"] == "team-a"
    assert root.attributes["gateway.routing.policy"] == "prefix"
    assert root.attributes["http.response.status_code"] == 200
    assert got["validate"].parent.span_id == root.context.span_id
    queue = got["queue wait"]
    assert queue.end_time - queue.start_time == 250_000_000
    assert [a.attributes["gateway.attempt.reason"] for a in attempts] == ["first", "failover"]
    assert attempts[0].status.status_code.name == "ERROR"
    assert got["relay"].parent.span_id == attempts[1].context.span_id
    # upstream: the caller's traceparent is replaced by the second attempt's own, once
    lines = sent.split(b"\r\n")
    assert lines[0] == b"x-request-id: r1"
    parents = [line for line in lines if line.startswith(b"traceparent")]
    assert parents == [
        f"traceparent: 00-{attempts[1].context.trace_id:032x}-"
        f"{attempts[1].context.span_id:016x}-01".encode()
    ]
    assert sum(line.startswith(b"tracestate") for line in lines) <= 1


def test_an_unsampled_caller_is_not_traced(spans) -> None:
    t, exporter = spans
    unsampled = CALLER.replace(b"-01\r\n", b"-00\r\n")
    trace = t.start("/v1/completions", b"r2", "k", unsampled)
    assert not trace.recording
    with trace.attempt("a:1", 1, "first") as at:
        assert b"-00\r\n" in at.forward(b"")  # the decision travels on to the engine
    trace.end(200)
    assert exporter.get_finished_spans() == ()


def test_a_failed_step_is_an_error_span(spans) -> None:
    t, exporter = spans
    trace = t.start("/v1/completions", b"r3", "k", b"")
    with pytest.raises(ValueError), trace.step("validate"):
        raise ValueError("bad body")
    trace.end(400)
    (validate,) = [s for s in exporter.get_finished_spans() if s.name == "validate"]
    assert validate.status.status_code.name == "ERROR"
    (root,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert root.attributes["http.response.status_code"] == 400
