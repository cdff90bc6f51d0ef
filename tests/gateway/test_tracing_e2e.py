"""One trace per request, gateway and engine (issue 28's "must show"), on the real CPU engine.

A local OTLP/HTTP receiver (``tests/support/otlp.py``) gets the spans of both: the gateway
(``GATEWAY_OTEL_ENDPOINT``) and an engine of this module started with
``ENGINE_OTLP_TRACES_ENDPOINT`` (the session engine exports nothing: its endpoint is fixed at
start). The gateway has two replicas: that engine, and ``ResettingProxy`` in front of the session
engine, which passes health and metrics through but drops the connection of every completion,
so a request routed there first fails over and its trace shows two upstream attempts (the
proxy fronts another engine because warm-up reports name an engine instance: two replicas of
one instance would not both turn ready).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest

from bench.gatewayproc import mark_all_warm
from tests.support.engine import Engine, start_engine
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.otlp import Receiver, Span, otlp_receiver
from tests.support.process import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.engine, pytest.mark.slow]
MODEL = "gemma-4-tiny"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class ResettingProxy:
    """A TCP proxy to ``target`` that closes any connection carrying a completion request."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, check: bool) -> None:
        try:
            while data := await r.read(65536):
                if check and b"POST /v1/chat/completions" in data:
                    w.transport.abort()
                    return
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        er, ew = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def up() -> None:
            try:
                while data := await cr.read(65536):
                    if b"POST /v1/chat/completions" in data:
                        cw.transport.abort()  # the gateway sees a reset before any answer
                        break
                    ew.write(data)
                    await ew.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                ew.close()

        await asyncio.gather(up(), self._pipe(er, cw, False))

    def __enter__(self) -> ResettingProxy:
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", self.port), self.loop
        )
        self.server = fut.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def traced_engine(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: None, receiver: Receiver
) -> Iterator[Engine]:
    eng = start_engine(
        tmp_path_factory.mktemp("traced-engine"),
        extra_env={
            "ENGINE_OTLP_TRACES_ENDPOINT": receiver.url,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "ENGINE_ENFORCE_EAGER": "true",  # a faster start; serving speed does not matter here
        },
    )
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="module")
def gateway(engine: Engine, traced_engine: Engine, receiver: Receiver) -> Iterator[RunningGateway]:
    with ResettingProxy(engine.port) as proxy:
        env = {
            "GATEWAY_UPSTREAM_URLS": f"http://127.0.0.1:{proxy.port},{traced_engine.url}",
            "GATEWAY_ROUTING": "round_robin",
            "GATEWAY_OTEL_ENDPOINT": receiver.url,
            "GATEWAY_OTEL_SAMPLE_RATIO": "1.0",
        }
        with run_gateway(traced_engine.url, env=env) as gw:
            mark_all_warm(gw)
            yield gw


GATEWAY = "gemma4-gateway"


def _trace(rx: Receiver, trace_id: str, need: set[str]) -> dict[str, Span]:
    """The spans of one trace, by span id, once the gateway's spans named in ``need`` and at
    least one engine span (any other service) arrived."""

    def probe() -> dict[str, Span] | None:
        spans = {s.span_id: s for s in rx.snapshot() if s.trace_id == trace_id}
        names = {s.name for s in spans.values() if s.service == GATEWAY}
        engine = any(s.service != GATEWAY for s in spans.values())
        return spans if need <= names and engine else None

    return wait_until(probe, f"spans {sorted(need)} of trace {trace_id}", timeout_s=30)


def _chat(gw: RunningGateway, headers: dict[str, str]) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "trace me"}],
            "max_tokens": 4, "temperature": 0, "stream": True}  # fmt: skip
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r


def test_one_trace_across_gateway_and_engine(gateway: RunningGateway, receiver: Receiver) -> None:
    """A caller's traceparent is continued; vLLM's span is a child of the attempt that
    carried the request; a request whose first replica reset shows two attempts."""
    seen_failover = False
    for i in range(4):  # round robin over two replicas: one of two requests meets the proxy
        trace_id = f"{CALLER_TRACE[:-2]}{i:02x}"
        caller_span = "00f067aa0ba902b7"
        _chat(gateway, {"traceparent": f"00-{trace_id}-{caller_span}-01"})
        spans = _trace(receiver, trace_id, {"relay"})
        by_name: dict[str, list[Span]] = {}
        for s in spans.values():
            by_name.setdefault(s.name if s.service == GATEWAY else "engine", []).append(s)
        (root,) = by_name["POST /v1/chat/completions"]
        assert root.parent_id == caller_span  # continues the caller's trace
        assert root.attrs["http.response.status_code"] == 200
        assert root.attrs["gateway.routing.policy"] == "round_robin"
        for name in ("validate", "admission", "queue wait", "route"):
            assert all(s.parent_id == root.span_id for s in by_name[name]), name
        (queue,) = by_name["queue wait"]
        assert queue.attrs["gateway.queue.class"] and "gateway.queue.position" in queue.attrs
        attempts = sorted(by_name["upstream attempt"], key=lambda s: s.attrs["gateway.attempt"])
        assert all(a.parent_id == root.span_id for a in attempts)
        last = attempts[-1]
        assert last.attrs["http.response.status_code"] == 200
        engine = by_name["engine"]
        tops = [s for s in engine if spans.get(s.parent_id, root).service == GATEWAY]
        assert tops and all(s.parent_id == last.span_id for s in tops), tops  # under the attempt
        assert any(s.attrs.get("gen_ai.usage.completion_tokens") == 4 for s in by_name["engine"])
        (relay,) = by_name["relay"]
        assert relay.parent_id == last.span_id
        assert relay.attrs["gateway.relay.outcome"] == "done"
        assert relay.attrs["gateway.relay.completion_tokens"] == 4
        assert relay.attrs["gateway.ttft_s"] > 0
        route = by_name["route"][-1]
        assert route.attrs["gateway.replica"] == last.attrs["gateway.replica"]
        if len(attempts) == 2:
            seen_failover = True
            first = attempts[0]
            assert first.attrs["gateway.attempt.reason"] == "first"
            assert last.attrs["gateway.attempt.reason"] == "failover"
            assert first.status_code == 2 and "error.type" in first.attrs
            assert first.attrs["gateway.replica"] != last.attrs["gateway.replica"]
            assert len(by_name["route"]) == 2
            break
    assert seen_failover, "no request met the resetting replica first"


def test_new_trace_without_caller_context(gateway: RunningGateway, receiver: Receiver) -> None:
    before = {s.trace_id for s in receiver.snapshot()}
    _chat(gateway, {"x-request-id": "trace-new-1"})

    def root() -> Span | None:
        for s in receiver.snapshot():
            if s.attrs.get("gateway.request_id") == "trace-new-1" and s.trace_id not in before:
                return s
        return None

    span = wait_until(root, "the gateway's root span", timeout_s=30)
    assert span.parent_id == ""
    spans = _trace(receiver, span.trace_id, {"relay"})
    engine = [s for s in spans.values() if s.service != GATEWAY]
    attempts = {s.span_id for s in spans.values() if s.name == "upstream attempt"}
    assert any(s.parent_id in attempts for s in engine)
