"""Per-key limits and token accounting through the service, with a scripted engine."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.admission.core import Admission
from gateway.call import Call, Timeouts
from gateway.errors import OpenAIError
from gateway.metrics import GatewayMetrics
from gateway.service import CompletionService
from gateway.tenancy.auth import hash_key
from gateway.tenancy.core import Tenancy
from gateway.tenancy.ratelimit import Charge, MemoryStore
from gateway.tenancy.tenants import parse
from tests.gateway.test_service import (
    CPU,
    MODEL,
    SSE,
    Counter,
    FakeEngine,
    FakeReplica,
    FakeResponse,
    FakeUpstreams,
    Sink,
    ready_health,
    sample,
)

pytestmark = pytest.mark.anyio
KEYS = f"""
keys:
  - {{key: {hash_key("sk-aaaaaaaaaaaaaaaaaaaa")}, label: five, rpm: 2}}
  - {{key: {hash_key("sk-bbbbbbbbbbbbbbbbbbbb")}, label: small, tpm: 60, max_tokens: 20}}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def setup(*answers: Any) -> tuple[CompletionService, MemoryStore, GatewayMetrics, Clock]:
    metrics, store, clock = GatewayMetrics(), MemoryStore(), Clock()
    tenancy = Tenancy(store, metrics, "count", clock)
    svc = CompletionService(
        policy=CPU,
        upstreams=FakeUpstreams(ready_health(), FakeReplica("r0", FakeEngine(*answers))),
        tokens=Counter(10),
        admission=Admission(2, 2, 30.0),
        metrics=metrics,
        timeouts=Timeouts(7.0, 9.0, 0.0),
        tenancy=tenancy,
    )
    return svc, store, metrics, clock


def call(label: str, **body: Any) -> Call:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
    tenant = parse(KEYS).by_label()[label]  # as the route's authentication finds it
    return Call("chat", "/v1/chat/completions", json.dumps(payload).encode(), tenant, b"r")


async def test_rpm_refuses_with_retry_after_and_headers_on_every_answer() -> None:
    svc, _, metrics, clock = setup(*(FakeResponse(200, SSE) for _ in range(3)))
    for remaining in (b"1", b"0"):
        sink = Sink()
        assert await svc.run(call("five", stream=True, max_tokens=4), sink) == 200
        assert dict(sink.headers)[b"x-ratelimit-remaining-requests"] == remaining
        assert dict(sink.headers)[b"x-ratelimit-limit-requests"] == b"2"  # rpm, not the cap
    clock.t += 6.0
    with pytest.raises(OpenAIError) as info:
        await svc.run(call("five", stream=True, max_tokens=4), Sink())
    err = info.value
    assert (err.status, err.code, err.retry_after) == (429, "rpm_limit", 24)  # 30 s - 6 s
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == "54s"
    assert sample(metrics, "gateway_key_rejections_total", key="five", reason="rpm_limit") == 1
    assert (
        sample(metrics, "gateway_key_requests_total", key="five", **{"class": "interactive"}) == 2
    )


async def test_tpm_settles_from_the_usage_it_asked_for_and_hides_it() -> None:
    svc, store, metrics, _ = setup(FakeResponse(200, SSE))
    sink = Sink()
    c = call("small", stream=True, max_tokens=20)
    assert await svc.run(c, sink) == 200
    relayed = b"".join(d for k, d in sink.events if k == "chunk")
    assert b'"usage"' not in relayed and relayed.endswith(b"data: [DONE]\n\n")  # stripped
    tokens = Charge("small/tokens", 60, 0)
    assert store.peek(tokens, Clock.t).remaining == 60 - (3 + 7)  # the engine's usage, not 10
    assert sample(metrics, "gateway_key_tokens_total", key="small", kind="prompt") == 3
    assert sample(metrics, "gateway_key_tokens_total", key="small", kind="completion") == 7


async def test_a_disconnect_settles_what_was_streamed() -> None:
    gate = asyncio.Event()
    pieces = [SSE[0], b'data: {"x":1}\n\n', b'data: {"x":2}\n\n']

    class Slow(FakeResponse):
        async def chunks(self):  # type: ignore[no-untyped-def]
            for p in self.pieces:
                yield p
            gate.set()
            await asyncio.sleep(3600)  # the engine keeps generating ...

    svc, store, _, _ = setup(Slow(200, pieces))
    task = asyncio.create_task(svc.run(call("small", stream=True, max_tokens=20), Sink()))
    await gate.wait()
    task.cancel()  # ... until the client goes away
    with pytest.raises(asyncio.CancelledError):
        await task
    tokens = Charge("small/tokens", 60, 0)
    # the counted prompt (10) + 2 streamed tokens (3 events, one the role), not 10 + 20
    assert store.peek(tokens, Clock.t).remaining == 60 - 12 and svc.admission.inflight == 0


async def test_models_and_max_tokens_cap_per_key() -> None:
    svc, _, _, _ = setup()
    with pytest.raises(OpenAIError) as info:
        await svc.run(call("small", max_tokens=21), Sink())
    assert (info.value.status, info.value.code, info.value.param) == (
        400, "max_tokens_limit", "max_tokens",
    )  # fmt: skip
    assert info.value.headers["x-ratelimit-limit-tokens"] == "60"
    svc2, _, _, _ = setup(
        FakeResponse(200, [b'{"usage":{"prompt_tokens":5,"completion_tokens":3}}'])
    )
    c = call("small")
    assert await svc2.run(c, Sink()) == 200
    assert json.loads(svc2.upstreams.replicas[0].pool.requests[0][1])["max_tokens"] == 20
