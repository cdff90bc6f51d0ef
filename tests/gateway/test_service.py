"""The completion service without ASGI or sockets: scripted engines, a recording sink.

What the routes rely on: the order of work (validate -> serving state -> count -> admit ->
forward), every exit path releasing its admission slot, and the sink told exactly one ending
(reply, end, or fail) with the right status. With several replicas: a failure before the answer
started goes once to another replica, never after the first byte.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.admission.core import Admission, Rejected
from gateway.call import Call, Timeouts
from gateway.errors import OpenAIError
from gateway.metrics import GatewayMetrics
from gateway.replicas.health import HealthTracker, Snapshot
from gateway.replicas.replica import Lease
from gateway.service import CompletionService
from gateway.tenancy.tenants import Tenant
from tests.gateway.test_validation import CPU, MODEL

pytestmark = pytest.mark.anyio

SSE = [b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n', b'data: {"x":1}\n\n',
       b'data: {"usage":{"prompt_tokens":3,"completion_tokens":7}}\n\n', b"data: [DONE]\n\n"]  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeResponse:
    def __init__(self, status: int, pieces: list[bytes], fail_after: int | None = None) -> None:
        self.status_code = status
        self.headers = {b"content-type": b"application/json"}
        self.pieces = pieces
        self.fail_after = fail_after
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, piece in enumerate(self.pieces):
            if self.fail_after is not None and i == self.fail_after:
                raise httpx.RemoteProtocolError("engine went away")
            yield piece

    async def aread(self) -> bytes:
        return b"".join(self.pieces)

    def close(self) -> None:
        self.closed = True


class FakeEngine:
    """Answers each request with the next scripted response (or raises it)."""

    def __init__(self, *answers: FakeResponse | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, bytes, bytes, float]] = []
        self.gate: asyncio.Event | None = None  # set: requests wait for it

    async def request(
        self, method: str, path: str, body: bytes, headers: bytes, read_timeout: float
    ) -> Any:
        self.requests.append((path, body, headers, read_timeout))
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Sink:
    def __init__(self) -> None:
        self.started = False
        self.events: list[tuple[str, Any]] = []
        self.headers: list[tuple[bytes, bytes]] = []

    def add_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    async def keepalive(self) -> None:
        self.started = True
        self.events.append(("keepalive", None))

    async def open(self) -> None:
        self.started = True
        self.events.append(("open", None))

    async def chunk(self, data: bytes) -> None:
        self.events.append(("chunk", data))

    async def end(self) -> None:
        self.events.append(("end", None))

    async def reply(self, status: int, body: bytes, content_type: bytes) -> None:
        self.events.append(("reply", (status, body, content_type)))

    async def fail(self, err: OpenAIError) -> None:
        self.events.append(("fail", (err.status, err.code, self.started)))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


class Liveness:
    """A replica's monitor as the service uses it."""

    def __init__(self) -> None:
        self.pokes = 0
        self.marked_down = 0

    def poke(self) -> None:
        self.pokes += 1

    def mark_down(self) -> None:
        self.marked_down += 1


class FakeReplica:
    def __init__(self, name: str, engine: FakeEngine) -> None:
        self.name = name
        self.pool = engine
        self.monitor = Liveness()
        self.inflight = 0
        self.served = 0

    def lease(self) -> Lease:
        return Lease(self)  # type: ignore[arg-type]


class FakeUpstreams:
    """Replicas in order; ``pick`` takes the first one not tried and not marked down."""

    def __init__(self, health: HealthTracker, *replicas: FakeReplica) -> None:
        self.health = health
        self.replicas = list(replicas)

    def serving(self) -> Snapshot:
        return self.health.snapshot()

    wants_tokens = False

    def pick(self, request: Any, exclude: tuple[Any, ...] = ()) -> Any:
        for r in self.replicas:
            if r not in exclude and not r.monitor.marked_down:
                return r
        return None


class Counter:
    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    async def count(self, parsed: object, request_id: str) -> int:
        self.calls += 1
        return self.n


def ready_health() -> HealthTracker:
    h = HealthTracker()
    h.observe_engine(True, "i1")
    h.report_warmup("i1", "passed", None, None)
    return h


def service(
    engine: FakeEngine,
    *,
    admission: Admission | None = None,
    health: HealthTracker | None = None,
    counter: Counter | None = None,
    keepalive_s: float = 0.0,
    others: tuple[FakeEngine, ...] = (),
) -> tuple[CompletionService, Admission, Liveness, GatewayMetrics]:
    adm = admission or Admission(2, 2, 30.0)
    first = FakeReplica("a:1", engine)
    live = first.monitor
    upstreams = FakeUpstreams(
        health or ready_health(),
        first,
        *(FakeReplica(f"r{i}:1", e) for i, e in enumerate(others)),
    )
    metrics = GatewayMetrics()
    svc = CompletionService(
        policy=CPU,
        upstreams=upstreams,  # type: ignore[arg-type]
        tokens=counter or Counter(10),
        admission=adm,
        metrics=metrics,
        timeouts=Timeouts(stream_idle_s=7.0, request_s=9.0, queue_keepalive_s=keepalive_s),
    )
    return svc, adm, live, metrics


def chat_call(**body: Any) -> Call:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
    return Call(
        "chat", "/v1/chat/completions", json.dumps(payload).encode(), Tenant("k1"), b"rid-1"
    )


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def test_a_stream_is_relayed_in_order_and_its_slot_released() -> None:
    engine = FakeEngine(FakeResponse(200, SSE))
    svc, adm, _, metrics = service(engine)
    sink = Sink()
    call = chat_call(stream=True, max_tokens=8, stream_options={"include_usage": True})
    assert await svc.run(call, sink) == 200
    assert sink.kinds() == ["open", "chunk", "chunk", "chunk", "chunk", "end"]
    assert [d for k, d in sink.events if k == "chunk"] == SSE
    assert adm.inflight == 0 and call.progress.phase == "upstream"
    path, body, headers, timeout = engine.requests[0]
    assert path == "/v1/chat/completions" and body == call.body  # forwarded untouched
    assert b"x-request-id: rid-1\r\n" in headers and timeout == 7.0  # the stream's idle bound
    assert sample(metrics, "gateway_streamed_tokens_total") == 7  # from the usage event
    assert sample(metrics, "gateway_prompt_token_counts_total", outcome="skipped") == 1
    # Rate headers from the admission state when admitted: cap 2, this request holds 1.
    assert dict(sink.headers)[b"x-ratelimit-limit-requests"] == b"2"
    assert dict(sink.headers)[b"x-ratelimit-remaining-requests"] == b"1"
    assert call.progress.completion_tokens == 7 and call.progress.queue_wait_s == 0.0


async def test_a_non_stream_answer_is_one_reply_with_the_request_timeout() -> None:
    engine = FakeEngine(FakeResponse(200, [b'{"choices":[]}']))
    svc, adm, _, _ = service(engine)
    sink = Sink()
    assert await svc.run(chat_call(max_tokens=4), sink) == 200
    assert sink.events == [("reply", (200, b'{"choices":[]}', b"application/json"))]
    assert engine.requests[0][3] == 9.0 and adm.inflight == 0


async def test_the_default_max_tokens_is_written_into_the_forwarded_body() -> None:
    engine = FakeEngine(FakeResponse(200, [b"{}"]))
    svc, _, _, _ = service(engine)
    await svc.run(chat_call(), Sink())
    assert json.loads(engine.requests[0][1])["max_tokens"] == CPU.default_max_tokens


async def test_an_engine_refusal_keeps_its_message_in_openai_shape() -> None:
    refusal = (
        b'{"error":{"message":"bad template","type":"BadRequestError","param":null,"code":400}}'
    )
    engine = FakeEngine(FakeResponse(400, [refusal]))
    svc, adm, _, _ = service(engine)
    sink = Sink()
    assert await svc.run(chat_call(stream=True, max_tokens=4), sink) == 400
    [(kind, (status, body, ctype))] = sink.events
    assert (kind, status, ctype) == ("reply", 400, b"application/json")
    assert json.loads(body) == {"error": {"message": "bad template", "type": "invalid_request_error",
                                          "param": None, "code": None}}  # fmt: skip
    assert adm.inflight == 0


async def test_not_ready_is_a_503_before_any_slot_or_count() -> None:
    health = HealthTracker()
    health.observe_engine(True, "i1")  # up, not warmed
    counter = Counter(10)
    svc, adm, _, _ = service(FakeEngine(), health=health, counter=counter)
    with pytest.raises(OpenAIError) as info:
        await svc.run(chat_call(max_tokens=4), Sink())
    assert (info.value.status, info.value.code) == (503, "warming_up")
    assert counter.calls == 0 and adm.inflight == 0


async def test_a_long_prompt_is_counted_and_refused_over_the_limit() -> None:
    counter = Counter(CPU.prompt_limit + 1)
    svc, adm, _, metrics = service(FakeEngine(), counter=counter)
    long = [{"role": "user", "content": "x" * 3000}]
    with pytest.raises(OpenAIError) as info:
        await svc.run(chat_call(messages=long, max_tokens=4, stream=True), Sink())
    assert info.value.code == "context_length_exceeded" and counter.calls == 1
    assert sample(metrics, "gateway_prompt_token_counts_total", outcome="counted") == 1
    assert adm.inflight == 0


async def test_engine_unreachable_pokes_the_monitor_and_frees_the_slot() -> None:
    svc, adm, live, metrics = service(FakeEngine(httpx.ConnectError("refused")))
    with pytest.raises(OpenAIError) as info:
        await svc.run(chat_call(stream=True, max_tokens=4), Sink())
    assert (info.value.status, info.value.code) == (503, "engine_down")
    assert live.marked_down == 1 and adm.inflight == 0
    assert sample(metrics, "gateway_upstream_errors_total", kind="ConnectError") == 1


async def test_a_refused_replica_fails_over_once_before_the_answer_started() -> None:
    other = FakeEngine(FakeResponse(200, SSE))
    svc, adm, live, _ = service(FakeEngine(httpx.ConnectError("refused")), others=(other,))
    sink = Sink()
    call = chat_call(stream=True, max_tokens=4)
    assert await svc.run(call, sink) == 200
    assert sink.kinds()[-1] == "end" and len(other.requests) == 1
    assert live.marked_down == 1 and call.progress.replica == "r0:1" and adm.inflight == 0


async def test_a_503_before_the_answer_fails_over_and_a_second_failure_is_final() -> None:
    busy = FakeResponse(503, [b'{"error":{"message":"shutting down"}}'])
    dead = FakeEngine(httpx.RemoteProtocolError("reset"))
    svc, adm, live, _ = service(FakeEngine(busy), others=(dead,))
    with pytest.raises(OpenAIError) as info:
        await svc.run(chat_call(stream=True, max_tokens=4), Sink())
    assert info.value.status == 502 and busy.closed  # the retry failed too: no third try
    assert live.marked_down == 1 and len(dead.requests) == 1 and adm.inflight == 0


async def test_a_read_timeout_is_not_retried() -> None:
    other = FakeEngine(FakeResponse(200, SSE))
    svc, _, live, _ = service(FakeEngine(httpx.ReadTimeout("slow")), others=(other,))
    with pytest.raises(OpenAIError):
        await svc.run(chat_call(stream=True, max_tokens=4), Sink())
    assert not other.requests and live.pokes == 1 and live.marked_down == 0


async def test_a_503_with_no_other_replica_is_the_engines_answer() -> None:
    busy = FakeResponse(503, [b'{"error":{"message":"overloaded"}}'])
    svc, _, live, _ = service(FakeEngine(busy))
    sink = Sink()
    assert await svc.run(chat_call(max_tokens=4), sink) == 503
    assert sink.events[0][0] == "reply" and live.marked_down == 0


async def test_engine_dying_mid_stream_is_a_terminal_sse_error() -> None:
    other = FakeEngine(FakeResponse(200, SSE))
    svc, adm, live, _ = service(FakeEngine(FakeResponse(200, SSE, fail_after=2)), others=(other,))
    sink = Sink()
    assert await svc.run(chat_call(stream=True, max_tokens=4), sink) == 502
    assert sink.kinds() == ["open", "chunk", "chunk", "fail"]
    assert sink.events[-1] == ("fail", (502, "engine_connection_lost", True))
    assert live.pokes == 1 and adm.inflight == 0
    assert not other.requests  # after the first byte: never retried


async def test_a_stream_without_done_is_an_error_not_a_success() -> None:
    svc, adm, live, _ = service(FakeEngine(FakeResponse(200, SSE[:2])))
    sink = Sink()
    assert await svc.run(chat_call(stream=True, max_tokens=4), sink) == 502
    assert sink.events[-1] == ("fail", (502, "engine_connection_lost", True))
    assert "end" not in sink.kinds() and live.pokes == 1 and adm.inflight == 0


async def test_a_queued_stream_gets_keepalives_then_its_turn() -> None:
    adm = Admission(1, 2, 30.0)
    holder = adm.try_admit("other")
    assert holder is not None
    engine = FakeEngine(FakeResponse(200, SSE))
    svc, _, _, _ = service(engine, admission=adm, keepalive_s=0.01)
    sink = Sink()
    task = asyncio.create_task(svc.run(chat_call(stream=True, max_tokens=4), sink))
    async with asyncio.timeout(30):
        while sink.kinds().count("keepalive") < 2:  # two ticks while queued
            await asyncio.sleep(0.005)
    assert adm.queued == 1 and not engine.requests
    adm.release(holder)
    assert await asyncio.wait_for(task, 30) == 200
    assert sink.kinds()[-1] == "end" and adm.inflight == 0


async def test_queue_full_is_a_429_with_retry_after() -> None:
    adm = Admission(1, 0, 30.0)
    assert adm.try_admit("other") is not None
    svc, _, _, _ = service(FakeEngine(), admission=adm)
    with pytest.raises(Rejected) as info:
        await svc.run(chat_call(max_tokens=4), Sink())
    assert info.value.status == 429 and info.value.code == "queue_full"
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    headers = dict(info.value.header_list())
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert headers[b"x-ratelimit-reset-requests"] == f"{info.value.retry_after}s".encode()


async def test_cancellation_upstream_releases_the_slot() -> None:
    engine = FakeEngine(FakeResponse(200, SSE))
    engine.gate = asyncio.Event()  # the engine never answers
    svc, adm, _, _ = service(engine)
    call = chat_call(stream=True, max_tokens=4)
    task = asyncio.create_task(svc.run(call, Sink()))
    async with asyncio.timeout(30):
        while not engine.requests:
            await asyncio.sleep(0.005)
    assert adm.inflight == 1 and call.progress.phase == "upstream"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert adm.inflight == 0


async def test_stripped_parameters_are_announced_in_a_header() -> None:
    from tests.gateway.test_validation import TPU, TPU_MODEL, tpu_policy

    engine = FakeEngine(FakeResponse(200, [b"{}"]))
    svc, _, _, _ = service(engine)
    svc.policy = tpu_policy(unsupported_sampling="strip")
    sink = Sink()
    body = {"model": TPU_MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4, "presence_penalty": 1}  # fmt: skip
    call = Call("chat", "/v1/chat/completions", json.dumps(body).encode(), Tenant("k"), b"r")
    await svc.run(call, sink)
    assert sink.headers[0] == (b"x-gateway-stripped-params", b"presence_penalty")
    assert "presence_penalty" not in json.loads(engine.requests[0][1]) and TPU.tpu


async def test_trace_context_reaches_the_engine_and_http10_cannot_stream() -> None:
    engine = FakeEngine(FakeResponse(200, [b"{}"]))
    svc, adm, _, _ = service(engine)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    trace = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    call = Call("chat", "/v1/chat/completions", json.dumps(payload).encode(), Tenant("k"), b"r",
                forward=trace)  # fmt: skip
    await svc.run(call, Sink())
    assert engine.requests[0][2].endswith(trace)
    old = Call("chat", "/v1/chat/completions", json.dumps({**payload, "stream": True}).encode(),
               Tenant("k"), b"r", http10=True)  # fmt: skip
    with pytest.raises(OpenAIError) as info:
        await svc.run(old, Sink())
    assert (info.value.status, info.value.code) == (400, "stream_needs_http11")
    assert adm.inflight == 0 and len(engine.requests) == 1
