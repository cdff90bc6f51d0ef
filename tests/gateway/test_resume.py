"""Resume after the first byte (gateway/resume/), without sockets: a toy greedy engine in vLLM's
stream format that breaks mid-stream the ways a real one does, and a client that reads the SSE.

The toy engine is deterministic like greedy decoding: the next token is a function of every token
before it (prompt included), so a continuation that gives the engine exactly the tokens the
client has must produce the uninterrupted answer token for token. Its tokenizer round-trips
(token ``k`` is the text `` wk``), so the text way (``continue_final_message``) is exact here
too; the real tokenizer does not round-trip (tests/gateway/test_resume_e2e.py).
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.admission.core import Admission
from gateway.apis import APIS, OPENAI_STREAM
from gateway.apis.chat import STREAM as CHAT_STREAM
from gateway.call import Call, Timeouts
from gateway.errors import OpenAIError
from gateway.metrics import GatewayMetrics
from gateway.resume import ResumePolicy
from gateway.resume.continuation import (
    COMPLETIONS_PATH,
    Continuation,
    NotResumable,
    build,
)
from gateway.resume.policy import Resumable
from gateway.resume.rewrite import Rewriter
from gateway.resume.transcript import Delivered, Transcript
from gateway.service import CompletionService
from gateway.tenancy.tenants import Tenant
from gateway.upstream.relay import EventFilter
from tests.gateway.test_service import (
    Counter,
    FakeReplica,
    FakeResponse,
    FakeUpstreams,
    ready_health,
)
from tests.gateway.test_validation import CPU, MODEL

pytestmark = pytest.mark.anyio
CHAT = APIS["chat"].resume
ON = ResumePolicy(enabled=True, max_continuations=1)
VLLM_ERROR = (b'data: {"error": {"message": "EngineCore encountered an issue. See stack trace '
              b'(above) for the root cause.", "type": "InternalServerError", "param": null, '
              b'"code": 500}}\n\n')  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- a toy greedy engine ----------------------------------------------------------------------


def tokenize(text: str) -> list[int]:
    return [int(w[1:]) if w[:1] == "w" and w[1:].isdigit() else zlib.crc32(w.encode()) % 50 + 200
            for w in text.split()]  # fmt: skip


def detokenize(ids: list[int]) -> str:
    return "".join(f" w{i}" for i in ids)


def next_token(seq: list[int]) -> int:
    return (sum(seq) * 31 + len(seq) * 7) % 90 + 10


def render(req: dict[str, Any]) -> list[int]:
    """A chat template: turns of role + content; the generation prompt, or the last message
    left open (``continue_final_message``)."""
    ids = [2]
    messages = req["messages"]
    for i, m in enumerate(messages):
        content = m["content"] if isinstance(m["content"], str) else "".join(
            p.get("text", "") for p in m["content"])  # fmt: skip
        ids += [5, {"system": 11, "user": 12, "assistant": 13}[m["role"]], *tokenize(content)]
        if not (req.get("continue_final_message") and i == len(messages) - 1):
            ids.append(6)
    if req.get("add_generation_prompt", True):
        ids += [5, 13]
    return ids


class ToyResponse:
    def __init__(self, engine: Toy, path: str, req: dict[str, Any], n: int) -> None:
        self.status_code = 200
        self.headers = {b"content-type": b"text/event-stream"}
        self.engine = engine
        self.chat = path.endswith("chat/completions")
        self.req = req
        self.n = n
        self.closed = False

    def _event(self, obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    async def chunks(self) -> AsyncIterator[bytes]:
        e, req = self.engine, self.req
        if self.chat:
            prompt = render(req)
        elif isinstance(req["prompt"], list):
            prompt = list(req["prompt"])
        else:
            prompt = tokenize(req["prompt"])
        ids = bool(req.get("return_token_ids"))
        head = {"id": f"{'chatcmpl' if self.chat else 'cmpl'}-{e.name}-{self.n}",
                "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": e.created, "model": req["model"]}  # fmt: skip
        if self.chat:
            yield self._event({**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                               "content": ""}, "logprobs": None, "finish_reason": None}],
                               "prompt_token_ids": prompt if ids else None, "prompt_text": None})  # fmt: skip
        seq = list(prompt)
        max_tokens = req.get("max_tokens") or 16
        held = ""  # chat's parser holds back a character that could start a marker
        for i in range(max_tokens):
            if e.break_after is not None and i == e.break_after:
                if e.partial:
                    yield b'data: {"id":"' + head["id"].encode() + b'","obj'
                raise httpx.RemoteProtocolError("peer closed connection")
            if e.error_after is not None and i == e.error_after:
                yield VLLM_ERROR + b"data: [DONE]\n\n"
                return
            if e.end_after is not None and i == e.end_after:
                return
            tok = next_token(seq)
            seq.append(tok)
            last = i == max_tokens - 1
            choice: dict[str, Any] = {"index": 0}
            if self.chat:
                text, held = held + detokenize([tok]), ""
                if e.holdback and tok % 3 and not last:  # like the "c" of "call:"
                    text, held = text[:-1], text[-1]
                choice["delta"] = {"content": text}
                choice.update(logprobs=None, finish_reason="length" if last else None)
                if last:
                    choice["stop_reason"] = None
            else:
                choice.update(text=detokenize([tok]), logprobs=None,
                              finish_reason="length" if last else None, stop_reason=None,
                              prompt_token_ids=prompt if ids and i == 0 else None)  # fmt: skip
            if e.tool_call_at == i:
                choice["delta"] = {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}
            choice["token_ids"] = [tok] if ids else None
            yield self._event({**head, "choices": [choice]})
        if e.stop_before_usage:
            raise httpx.ReadError("gone")
        if (req.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + max_tokens,
                     "completion_tokens": max_tokens}  # fmt: skip
            yield self._event({**head, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    async def aread(self) -> bytes:
        return b""

    def close(self) -> None:
        self.closed = True


class Toy:
    """Answers every request in vLLM's stream format; faults are per engine, for its first
    answer only (``once``) or every answer."""

    def __init__(self, name: str, created: int = 1000, **faults: Any) -> None:
        self.name = name
        self.created = created
        self.requests: list[tuple[str, dict[str, Any], bytes]] = []
        self.break_after: int | None = faults.get("break_after")
        self.error_after: int | None = faults.get("error_after")
        self.end_after: int | None = faults.get("end_after")
        self.tool_call_at: int | None = faults.get("tool_call_at")
        self.partial: bool = faults.get("partial", False)
        self.stop_before_usage: bool = faults.get("stop_before_usage", False)
        self.holdback: bool = faults.get("holdback", False)
        self.refuse: int | None = faults.get("refuse")
        self.connect_error: bool = faults.get("connect_error", False)
        self.gate: asyncio.Event | None = None

    async def request(
        self, method: str, path: str, body: bytes, headers: bytes, read_timeout: float
    ) -> Any:
        req = json.loads(body)
        self.requests.append((path, req, headers))
        if self.gate is not None:
            await self.gate.wait()
        if self.connect_error:
            raise httpx.ConnectError("refused")
        if self.refuse:
            return FakeResponse(
                self.refuse, [b'{"error":{"message":"no","code":%d}}' % self.refuse]
            )
        return ToyResponse(self, path, req, len(self.requests))


# -- a client that reads the stream -----------------------------------------------------------


class Client:
    """The service's sink, keeping the bytes a client would read."""

    def __init__(self, error_event: Any = CHAT_STREAM.error_event) -> None:
        self.started = False
        self.data = b""
        self.ended = False
        self.failed: OpenAIError | None = None
        self.error_event = error_event

    def add_header(self, name: bytes, value: bytes) -> None:
        pass

    async def keepalive(self) -> None:
        self.started = True

    async def open(self) -> None:
        self.started = True

    async def chunk(self, data: bytes) -> None:
        self.data += data

    async def end(self) -> None:
        self.ended = True

    async def reply(self, status: int, body: bytes, content_type: bytes) -> None:
        raise AssertionError(f"a stream was answered whole: {status} {body!r}")

    async def fail(self, err: OpenAIError) -> None:
        self.failed = err
        self.data += self.error_event(err)

    def events(self) -> list[Any]:
        """Every ``data:`` payload in order (JSON decoded; ``[DONE]`` as a string)."""
        out: list[Any] = []
        for block in self.data.split(b"\n\n"):
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    raw = line[6:]
                    out.append("[DONE]" if raw == b"[DONE]" else json.loads(raw))
        return out

    def text(self) -> str:
        out = []
        for e in self.events():
            for c in e.get("choices", []) if isinstance(e, dict) else ():
                out.append((c.get("delta") or {}).get("content") or c.get("text") or "")
        return "".join(out)

    def usage(self) -> dict[str, int] | None:
        found = [e["usage"] for e in self.events() if isinstance(e, dict) and e.get("usage")]
        assert len(found) <= 1, found
        return found[0] if found else None


def gateway(*engines: Toy, policy: ResumePolicy = ON) -> tuple[CompletionService, Admission,
                                                               GatewayMetrics, list[FakeReplica]]:  # fmt: skip
    adm = Admission(4, 4, 30.0)
    names = ["a:1", "b:1", "c:1"]
    replicas = [FakeReplica(names[i], e) for i, e in enumerate(engines)]  # type: ignore[arg-type]
    metrics = GatewayMetrics()
    svc = CompletionService(
        policy=CPU, upstreams=FakeUpstreams(ready_health(), *replicas),  # type: ignore[arg-type]
        tokens=Counter(10), admission=adm, metrics=metrics,
        timeouts=Timeouts(stream_idle_s=7.0, request_s=9.0, queue_keepalive_s=0.0),
        resume=policy,
    )  # fmt: skip
    return svc, adm, metrics, replicas


def chat(**body: Any) -> Call:
    payload = {"model": MODEL, "stream": True, "max_tokens": 12, "temperature": 0, "seed": 7,
               "messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "tell me w3 w9"}], **body}  # fmt: skip
    return Call(
        "chat", "/v1/chat/completions", json.dumps(payload).encode(), Tenant("k1"), b"rid-1"
    )


def completion(**body: Any) -> Call:
    payload = {"model": MODEL, "stream": True, "max_tokens": 12, "temperature": 0,
               "prompt": "once upon w4", **body}  # fmt: skip
    return Call(
        "completions", "/v1/completions", json.dumps(payload).encode(), Tenant("k1"), b"rid-2"
    )


def resumed_from(call: Call) -> str | None:
    """What the access log names (``routes/openai.py``)."""
    return call.progress.resume.resumed_from if call.progress.resume else None


def resumes(metrics: GatewayMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("gateway_stream_resumes_total",
                                             {"outcome": outcome}) or 0.0  # fmt: skip


async def uninterrupted(make: Any, holdback: bool = False, **body: Any) -> Client:
    """The same request on one healthy engine (resume has nowhere to go: plain relay)."""
    svc, _, _, _ = gateway(Toy("ref", holdback=holdback))
    client = Client()
    assert await svc.run(make(**body), client) == 200 and client.ended
    return client


def assert_one_stream(client: Client, kind: str = "chat") -> None:
    """One id, one created, one model, choice 0, one role event, [DONE] once and last, no
    error event: what a client of an uninterrupted stream sees."""
    events = client.events()
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    objs = [e for e in events if isinstance(e, dict)]
    assert not [e for e in objs if "error" in e]
    assert len({(e["id"], e["created"], e["model"]) for e in objs}) == 1, objs
    assert all(c["index"] == 0 for e in objs for c in e["choices"])
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    assert {e["object"] for e in objs} == {obj}
    if kind == "chat":
        roles = [c for e in objs for c in e["choices"] if "role" in c["delta"]]
        assert len(roles) == 1


# -- the service: a stream broken mid-way, continued ------------------------------------------


@pytest.mark.parametrize("usage", [False, True])
async def test_a_chat_stream_broken_mid_way_is_continued_exactly_on_another_replica(
    usage: bool,
) -> None:
    options = {"stream_options": {"include_usage": True}} if usage else {}
    reference = await uninterrupted(chat, **options)
    dead, healthy = Toy("a", created=1000, break_after=9), Toy("b", created=2000)
    svc, adm, metrics, replicas = gateway(dead, healthy)
    client = Client()
    call = chat(**options)
    assert await svc.run(call, client) == 200
    assert client.ended and client.failed is None
    assert_one_stream(client)
    assert client.text() == reference.text()  # nothing duplicated, nothing missing
    assert client.events()[0]["id"] == "chatcmpl-a-1"  # the original stream's identity
    # The continuation, on the completions endpoint: prompt ids + the first 8 of the 9 generated
    # ids (it repeats the last one: the boundary before it is clean, see continuation.anchor).
    [(path, req, headers)] = healthy.requests
    sent = dead.requests[0][1]
    assert sent["return_token_ids"] is True  # the gateway asked for the ids ...
    # ... and the client never sees them
    assert all(c.get("token_ids") is None for e in client.events() if isinstance(e, dict)
               for c in e["choices"])  # fmt: skip
    prompt = render(sent)
    generated = [int(w[1:]) for w in client.text().split()]
    assert path == COMPLETIONS_PATH and req["prompt"] == prompt + generated[:8]
    assert (req["max_tokens"], req["seed"], req["temperature"]) == (4, 7, 0)
    assert b"x-request-id: rid-1-resume1\r\n" in headers
    # One final usage: the prompt once, the completion = what the client was sent.
    assert client.usage() == (reference.usage() if usage else None)
    if usage:
        assert client.usage() == {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + 12,
                                  "completion_tokens": 12}  # fmt: skip
    assert (
        call.progress.completion_tokens == 12
        and b'"prompt_tokens":%d' % len(prompt) in call.progress.usage_tail
    )
    assert (call.progress.replica, resumed_from(call)) == ("b:1", "a:1")
    assert resumes(metrics, "resumed") == 1 and adm.inflight == 0
    assert replicas[0].monitor.pokes == 1 and replicas[1].inflight == 0


@pytest.mark.parametrize("cut", range(1, 12))
async def test_text_that_lagged_its_tokens_is_neither_lost_nor_repeated(cut: int) -> None:
    """The toy's chat stream holds back the last character of most tokens (as vLLM's chat
    parsers hold a "c" that could start "call:") and sends it with the next event: broken after
    such a token, the client has less text than its tokens hold, and it still gets exactly the
    whole answer."""
    reference = await uninterrupted(chat, holdback=True)
    svc, _, metrics, _ = gateway(Toy("a", break_after=cut, holdback=True), Toy("b", holdback=True))
    client = Client()
    assert await svc.run(chat(), client) == 200
    assert_one_stream(client)
    assert client.text() == reference.text() and resumes(metrics, "resumed") == 1


async def test_a_completions_stream_is_continued_from_prompt_and_generated_ids() -> None:
    reference = await uninterrupted(completion)
    dead, healthy = Toy("a", break_after=10), Toy("b", created=2000)
    svc, _, metrics, _ = gateway(dead, healthy)
    client = Client(OPENAI_STREAM.error_event)
    assert await svc.run(completion(), client) == 200
    assert_one_stream(client, "completions")
    assert client.text() == reference.text()
    [(_, req, _)] = healthy.requests
    generated = [int(w[1:]) for w in client.text().split()]
    assert req["prompt"] == tokenize("once upon w4") + generated[:9]
    assert all(c["prompt_token_ids"] is None for e in client.events() if isinstance(e, dict)
               for c in e["choices"])  # fmt: skip
    assert resumes(metrics, "resumed") == 1


async def test_chat_with_tools_continues_as_text_with_continue_final_message() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    reference = await uninterrupted(chat, tools=tools)
    dead, healthy = Toy("a", break_after=3), Toy("b", created=2000)
    svc, _, _, _ = gateway(dead, healthy)
    client = Client()
    assert await svc.run(chat(tools=tools), client) == 200
    assert_one_stream(client)
    assert client.text() == reference.text()
    [(path, req, _)] = healthy.requests
    assert path == "/v1/chat/completions" and req["tools"] == tools
    assert req["continue_final_message"] is True and req["add_generation_prompt"] is False
    assert req["messages"][-1] == {"role": "assistant", "content": reference.text()[:12]}
    assert req["max_tokens"] == 9 and "max_completion_tokens" not in req


async def test_a_client_that_turned_token_ids_off_is_continued_from_text() -> None:
    reference = await uninterrupted(completion, return_token_ids=False)
    dead, healthy = Toy("a", break_after=6), Toy("b")
    svc, _, _, _ = gateway(dead, healthy)
    client = Client(OPENAI_STREAM.error_event)
    assert await svc.run(completion(return_token_ids=False), client) == 200
    assert client.text() == reference.text()
    assert dead.requests[0][1]["return_token_ids"] is False  # the client's choice, kept
    [(_, req, _)] = healthy.requests
    generated = [int(w[1:]) for w in client.text().split()]
    assert req["prompt"] == "once upon w4" + detokenize(generated[:6]) and req["max_tokens"] == 6


async def test_a_client_prefill_is_extended_not_repeated() -> None:
    prefill = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "w1 w2"}]
    body = {"messages": prefill, "continue_final_message": True, "add_generation_prompt": False,
            "tools": [{"type": "function", "function": {"name": "f"}}]}  # fmt: skip
    reference = await uninterrupted(chat, **body)
    dead, healthy = Toy("a", break_after=2), Toy("b")
    svc, _, _, _ = gateway(dead, healthy)
    client = Client()
    assert await svc.run(chat(**body), client) == 200
    assert client.text() == reference.text()
    [(_, req, _)] = healthy.requests
    assert req["messages"][-1]["content"] == "w1 w2" + reference.text()[:8]


async def test_the_engines_error_event_is_continued_and_never_reaches_the_client() -> None:
    reference = await uninterrupted(chat)
    svc, _, metrics, _ = gateway(Toy("a", error_after=4), Toy("b"))
    client = Client()
    assert await svc.run(chat(), client) == 200
    assert_one_stream(client)
    assert client.text() == reference.text() and b"InternalServerError" not in client.data
    assert metrics.registry.get_sample_value(
        "gateway_upstream_errors_total", {"kind": "EngineErrorEvent"}) == 1  # fmt: skip


async def test_half_an_event_from_a_dying_engine_never_reaches_the_client() -> None:
    reference = await uninterrupted(chat)
    svc, _, _, _ = gateway(Toy("a", break_after=5, partial=True), Toy("b"))
    client = Client()
    assert await svc.run(chat(), client) == 200
    assert b'"obj' not in client.data.replace(b'"object"', b"")
    assert client.text() == reference.text()


async def test_a_stream_cut_after_its_last_token_is_ended_by_the_gateway() -> None:
    reference = await uninterrupted(chat, stream_options={"include_usage": True})
    healthy = Toy("b")
    svc, _, metrics, _ = gateway(Toy("a", stop_before_usage=True), healthy)
    client = Client()
    assert await svc.run(chat(stream_options={"include_usage": True}), client) == 200
    assert_one_stream(client)
    assert client.text() == reference.text() and client.usage() == reference.usage()
    assert not healthy.requests and resumes(metrics, "finished") == 1


# -- when nothing continues: the terminal error, OpenAI-shaped ---------------------------------


def terminal(client: Client) -> dict[str, Any]:
    events = client.events()
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    [err] = [e for e in events if isinstance(e, dict) and "error" in e]
    assert events[-2] is err  # the last event before [DONE]
    return err["error"]


@pytest.mark.parametrize("fault", [{"break_after": 5}, {"error_after": 5}, {"end_after": 5}])
async def test_resume_off_is_the_terminal_error_as_before_and_forwards_the_body_untouched(
    fault: dict[str, int],
) -> None:
    dead, healthy = Toy("a", **fault), Toy("b")
    svc, adm, metrics, _ = gateway(dead, healthy, policy=ResumePolicy(enabled=False))
    client = Client()
    call = chat()
    status = await svc.run(call, client)
    assert not healthy.requests and adm.inflight == 0
    err = terminal(client)
    assert err["type"] == "server_error" and isinstance(err["code"], str)  # OpenAI's shape
    assert b"InternalServerError" not in client.data
    assert "return_token_ids" not in dead.requests[0][1]
    if "error_after" in fault:
        assert (status, err["code"]) == (500, "engine_error")
        assert err["message"].startswith("EngineCore encountered an issue")
    else:
        assert (status, err["code"]) == (502, "engine_connection_lost")
    assert resumes(metrics, "resumed") == 0 and resumed_from(call) is None


async def test_one_replica_keeps_nothing_and_ends_with_the_terminal_error() -> None:
    dead = Toy("a", break_after=3)
    svc, _, metrics, _ = gateway(dead)
    client = Client()
    call = chat()
    assert await svc.run(call, client) == 502
    assert terminal(client)["code"] == "engine_connection_lost"
    assert call.progress.resume is None and "return_token_ids" not in dead.requests[0][1]
    assert (await uninterrupted(chat)).text().startswith(client.text())
    assert len(client.text().split()) == 3 and resumes(metrics, "no_replica") == 0


async def test_a_replica_that_dies_again_ends_the_stream_after_resume_max_no_loop() -> None:
    first, second, third = Toy("a", break_after=3), Toy("b", break_after=2), Toy("c")
    svc, adm, metrics, _ = gateway(first, second, third)
    client = Client()
    call = chat()
    assert await svc.run(call, client) == 502
    assert terminal(client)["code"] == "engine_connection_lost"
    assert len(first.requests) == len(second.requests) == 1 and not third.requests
    assert resumes(metrics, "exhausted") == 1 and adm.inflight == 0
    assert (call.progress.replica, resumed_from(call)) == ("b:1", "a:1")
    # What reached the client before the end is still one clean prefix of the answer (the
    # second replica repeated token 3 and sent token 4, then broke).
    reference = await uninterrupted(chat)
    assert reference.text().startswith(client.text()) and len(client.text().split()) == 4


async def test_with_resume_max_2_a_third_replica_finishes_it() -> None:
    reference = await uninterrupted(chat)
    first, second, third = Toy("a", break_after=9), Toy("b", break_after=3), Toy("c")
    svc, _, metrics, _ = gateway(first, second, third,
                                 policy=ResumePolicy(enabled=True, max_continuations=2))  # fmt: skip
    client = Client()
    call = chat()
    assert await svc.run(call, client) == 200
    assert_one_stream(client)
    assert client.text() == reference.text()
    # b repeated token 9 and sent 10 and 11 before it broke; c goes on from token 11.
    generated = [int(w[1:]) for w in client.text().split()]
    assert third.requests[0][1]["prompt"] == render(first.requests[0][1]) + generated[:10]
    assert (call.progress.replica, resumed_from(call)) == ("c:1", "a:1,b:1")
    assert resumes(metrics, "resumed") == 1


@pytest.mark.parametrize("answer", [{"connect_error": True}, {"refuse": 503}])
async def test_a_continuation_that_cannot_start_counts_against_the_budget(
    answer: dict[str, Any],
) -> None:
    svc, _, metrics, _ = gateway(Toy("a", break_after=3), Toy("b", **answer))
    client = Client()
    assert await svc.run(chat(), client) == 502
    assert terminal(client)["code"] == "engine_connection_lost"  # the break, not the retry
    assert resumes(metrics, "exhausted") == 1


async def test_a_continuation_refused_as_bad_is_not_tried_again() -> None:
    svc, _, metrics, _ = gateway(Toy("a", break_after=3), Toy("b", refuse=400), Toy("c"),
                                 policy=ResumePolicy(enabled=True, max_continuations=3))  # fmt: skip
    client = Client()
    assert await svc.run(chat(), client) == 502
    assert resumes(metrics, "refused") == 1


async def test_no_other_routable_replica_is_the_terminal_error() -> None:
    svc, _, metrics, replicas = gateway(Toy("a", break_after=3), Toy("b"))
    replicas[1].monitor.marked_down = 1  # the other one is down
    client = Client()
    assert await svc.run(chat(), client) == 502
    assert resumes(metrics, "no_replica") == 1


@pytest.mark.parametrize(
    "body,fault,reason",
    [
        ({"logprobs": True, "top_logprobs": 2}, {}, "top logprobs"),
        ({"response_format": {"type": "json_object"}}, {}, "structured output"),
        ({"chat_template_kwargs": {"enable_thinking": True}}, {}, "reasoning"),
        ({}, {"tool_call_at": 2}, "tool call"),
    ],
)
async def test_outputs_that_cannot_be_continued_faithfully_end_as_before(
    body: dict[str, Any], fault: dict[str, int], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = Toy("b")
    svc, _, metrics, _ = gateway(Toy("a", break_after=4, **fault), healthy)
    client = Client()
    with caplog.at_level("INFO", "gateway.resume"):
        assert await svc.run(chat(**body), client) == 502
    assert not healthy.requests and resumes(metrics, "not_resumable") == 1
    assert reason in caplog.text


async def test_n_above_one_is_never_resumable_and_keeps_nothing() -> None:
    dead = Toy("a", break_after=3)
    svc, _, _, _ = gateway(dead, Toy("b"))
    call = chat(n=2)
    await svc.run(call, Client())
    assert call.progress.resume is None and "return_token_ids" not in dead.requests[0][1]


async def test_a_client_gone_is_never_continued() -> None:
    """The disconnect cancels the request's task (asgi.DisconnectGuard): the continuation's
    request is abandoned, its replica and the admission slot are given back, and nothing more
    is sent."""
    healthy = Toy("b")
    healthy.gate = asyncio.Event()  # the continuation waits: the client leaves meanwhile
    svc, adm, _, replicas = gateway(Toy("a", break_after=3), healthy)
    task = asyncio.create_task(svc.run(chat(), Client()))
    async with asyncio.timeout(30):
        while not healthy.requests:
            await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert adm.inflight == 0 and replicas[1].inflight == 0 and len(healthy.requests) == 1


async def test_responses_streams_are_not_continued() -> None:
    from gateway.apis.responses import STREAM as RESPONSES_STREAM

    pieces = [b'event: response.created\ndata: {"type":"response.created"}\n\n']
    dead = FakeResponse(200, pieces, fail_after=1)
    engine = Toy("b")
    svc, _, metrics, _ = gateway(Toy("a"), engine)
    svc.upstreams.replicas[0].pool = _Once(dead)  # type: ignore[attr-defined]
    body = {"model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 8}
    call = Call("responses", "/v1/responses", json.dumps(body).encode(), Tenant("k"), b"r")
    client = Client(RESPONSES_STREAM.error_event)
    assert await svc.run(call, client) == 502
    assert call.progress.resume is None and not engine.requests
    assert client.data.endswith(RESPONSES_STREAM.error_event(client.failed))  # type: ignore[arg-type]
    assert resumes(metrics, "resumed") == 0


class _Once:
    def __init__(self, response: FakeResponse) -> None:
        self.response = response

    async def request(self, *args: Any) -> FakeResponse:
        return self.response


# -- the parts ---------------------------------------------------------------------------------

# vLLM 0.32's own bytes (tiny model, greedy), asked for token ids and not.
WITH_IDS = (
    b'data: {"id":"chatcmpl-8cc7","object":"chat.completion.chunk","created":1796553268,'
    b'"model":"gemma-4-tiny","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}],"prompt_token_ids":[2,5,102,442,216],'
    b'"prompt_text":null}\n\n'
    b'data: {"id":"chatcmpl-8cc7","object":"chat.completion.chunk","created":1796553268,'
    b'"model":"gemma-4-tiny","choices":[{"index":0,"delta":{"content":"ise"},"logprobs":null,'
    b'"finish_reason":null,"token_ids":[1140]}]}\n\n'
)
WITHOUT_IDS = WITH_IDS.replace(b"[2,5,102,442,216]", b"null").replace(b"[1140]", b"null")
COMPLETION_WITH_IDS = (
    b'data: {"id":"cmpl-9d8","object":"text_completion","created":1796553269,"model":"gemma-4-tiny",'
    b'"choices":[{"index":0,"text":" vars","logprobs":null,"finish_reason":null,"stop_reason":null,'
    b'"prompt_token_ids":[372,892],"token_ids":[3257]}]}\n\n'
)


def test_the_client_gets_vllms_bytes_as_if_it_had_not_asked_for_ids() -> None:
    kept = Transcript()
    f = EventFilter(strip_ids=True, capture=kept)
    assert f.feed(WITH_IDS[:50]) == b""  # half an event waits for its end
    assert f.feed(WITH_IDS[50:]) == WITHOUT_IDS
    assert kept.delivered().prompt_ids == [2, 5, 102, 442, 216]
    assert kept.delivered().token_ids == [1140] and kept.delivered().tokens == 1
    out = EventFilter(strip_ids=True).feed(COMPLETION_WITH_IDS)
    assert b'"prompt_token_ids":null,"token_ids":null}' in out


def test_the_engine_error_event_and_what_follows_are_held_back() -> None:
    f = EventFilter()
    good = WITHOUT_IDS
    assert f.feed(good + VLLM_ERROR + b"data: [DONE]\n\n") == good
    assert f.error == VLLM_ERROR
    assert f.flush() == b""


def test_the_transcript_is_parsed_only_when_read_and_folded_when_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [WITH_IDS] + [
        b'data: {"id":"x","choices":[{"index":0,"delta":{"content":" w%d"},"token_ids":[%d]}]}\n\n'
        % (i, i) for i in range(50)
    ]  # fmt: skip
    whole = Transcript()
    for e in events:
        whole.append(e)
    assert whole.kept_bytes == sum(map(len, events))  # nothing parsed yet
    monkeypatch.setattr("gateway.resume.transcript.FOLD_BYTES", 500)
    folded = Transcript()
    for e in events:
        folded.append(e)
    assert folded.kept_bytes < 600  # parsed as it went, the bytes let go
    a, b = whole.delivered(), folded.delivered()
    assert (a.content, a.token_ids, a.tokens, a.prompt_ids) == (
        b.content, b.token_ids, b.tokens, b.prompt_ids)  # fmt: skip
    assert a.tokens == 51 and a.content == "ise" + detokenize(list(range(50)))


def delivered_of(*raw: bytes) -> Delivered:
    t = Transcript()
    for r in raw:
        t.append(r)
    return t.delivered()


def test_the_builder_chooses_ids_then_text_and_keeps_the_sampling() -> None:
    body = {"model": MODEL, "stream": True, "max_completion_tokens": 20, "min_tokens": 5,
            "temperature": 0.7, "seed": 3, "top_p": 0.9, "stop": ["x"],
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    state = Resumable("chat", json.dumps(body).encode(), 20, strip_ids=True)
    more = b"".join(
        b'data: {"choices":[{"index":0,"delta":{"content":" w%d"},"token_ids":[%d]}]}\n\n' % (i, i)
        for i in range(10, 20)
    )  # fmt: skip
    plan = build(state, delivered_of(WITH_IDS, more), None)  # 11 tokens
    assert isinstance(plan, Continuation) and plan.strategy == "ids"
    req = json.loads(plan.body)
    # Back to the clean boundary before " w19": the last token is repeated.
    assert req["prompt"] == [2, 5, 102, 442, 216, 1140, *range(10, 19)]
    assert (plan.start, plan.delivered, plan.anchor, plan.regenerated) == (10, 11, " w19", (19,))
    assert req["max_tokens"] == 10
    assert (req["min_tokens"], req["temperature"], req["seed"], req["top_p"], req["stop"]) == (
        0, 0.7, 3, 0.9, ["x"])  # fmt: skip
    assert "messages" not in req and "max_completion_tokens" not in req
    assert plan.prompt_tokens == 5 and req["return_token_ids"] is True
    media = {**body, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}, {"type": "text", "text": "?"}]}]}  # fmt: skip
    plan = build(Resumable("chat", json.dumps(media).encode(), 20, True), delivered_of(WITH_IDS), 9)
    assert isinstance(plan, Continuation) and plan.strategy == "text"
    req = json.loads(plan.body)
    assert req["messages"][-1] == {"role": "assistant", "content": "ise"}
    assert req["messages"][0] == media["messages"][0] and req["return_token_ids"] is True


def test_a_token_prompt_without_generated_ids_cannot_be_continued() -> None:
    body = {"model": MODEL, "stream": True, "max_tokens": 9, "prompt": [1, 2, 3],
            "return_token_ids": False}  # fmt: skip
    with pytest.raises(NotResumable):
        build(Resumable("completions", json.dumps(body).encode(), 9, False),
              delivered_of(COMPLETION_WITH_IDS.replace(b"[3257]", b"null")), None)  # fmt: skip


def test_the_rewriter_writes_vllms_chat_chunks_from_a_completions_continuation() -> None:
    d = delivered_of(WITH_IDS)
    plan = Continuation(COMPLETIONS_PATH, b"{}", "ids", 5, 1, start=1)
    rw = Rewriter(CHAT, plan, d)
    cont = (
        b'data: {"id":"cmpl-new","object":"text_completion","created":5,"model":"gemma-4-tiny",'
        b'"choices":[{"index":0,"text":"eg","logprobs":null,"finish_reason":null,'
        b'"stop_reason":null,"prompt_token_ids":[1,2],"token_ids":[778]}]}\n\n'
        b'data: {"id":"cmpl-new","object":"text_completion","created":5,"model":"gemma-4-tiny",'
        b'"choices":[{"index":0,"text":"field","logprobs":null,"finish_reason":"length",'
        b'"stop_reason":null,"prompt_token_ids":null,"token_ids":[2082]}]}\n\n'
        b'data: {"id":"cmpl-new","object":"text_completion","created":5,"model":"gemma-4-tiny",'
        b'"choices":[],"usage":{"prompt_tokens":6,"total_tokens":8,"completion_tokens":2},'
        b'"system_fingerprint":"vllm-0.32.0"}\n\ndata: [DONE]\n\n'
    )
    head = b'data: {"id":"chatcmpl-8cc7","object":"chat.completion.chunk","created":1796553268,"model":"gemma-4-tiny","choices":'
    assert rw(cont) == (
        head + b'[{"index":0,"delta":{"content":"eg"},"logprobs":null,"finish_reason":null,'
        b'"token_ids":[778]}]}\n\n'
        + head + b'[{"index":0,"delta":{"content":"field"},"logprobs":null,"finish_reason":'
        b'"length","stop_reason":null,"token_ids":[2082]}]}\n\n'
        + head + b'[],"usage":{"prompt_tokens":5,"total_tokens":8,"completion_tokens":3},'
        b'"system_fingerprint":"vllm-0.32.0"}\n\ndata: [DONE]\n\n'
    )  # fmt: skip
    assert (
        rw.tokens == 2 and rw.completion_tokens == 3 and b'"completion_tokens":3' in rw.usage_event
    )


@pytest.mark.parametrize(
    "pieces,start,anchor",
    [
        # before the latest event that starts with whitespace (nothing can be held there)
        ([(" alpha", 1), (" bravo", 1), ("o", 1), ("cick", 1)], 1, " bravoocick"),
        ([(" alpha", 1), (" bravo", 1)], 1, " bravo"),
        # not after an event without text (a character's first bytes may be held there) ...
        ([(" alpha", 1), ("", 1), (" bravo", 2), ("é", 1)], 0, " alpha bravoé"),
        # ... else from the start: the prompt's end is clean
        ([("alpha", 1), ("bravo", 1)], 0, "alphabravo"),
    ],
)
def test_the_anchor_is_the_latest_clean_boundary(
    pieces: list[tuple[str, int]], start: int, anchor: str
) -> None:
    from gateway.resume.continuation import anchor as find

    text = "".join(t for t, _ in pieces)
    assert find(pieces, sum(n for _, n in pieces), text) == (start, anchor)


def completion_event(text: str, ids: list[int], finish: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish,
              "stop_reason": None, "token_ids": ids}  # fmt: skip
    return b"data: " + json.dumps({"id": "c", "choices": [choice]}).encode() + b"\n\n"


def contents(out: bytes) -> str:
    return "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in out.split(b"\n\n") if line.startswith(b"data: {"))  # fmt: skip


@pytest.mark.parametrize("lag_at_start", [False, True])
def test_the_rewriter_sends_exactly_what_the_client_lacks_when_text_lagged(
    lag_at_start: bool,
) -> None:
    """Chat held back the "c" of the token "oc" (it could start a tool call) and sent it with
    the next event. Cut right after "oc": the client lacks the "c". Cut later and continued
    from the token after "oc": the client has the "c", which the continuation (from a prompt
    ending in "oc") does not write again."""
    from gateway.resume.continuation import anchor

    pieces = [(" alpha bravo charlie delta", 1), (" echo", 1), ("o", 1)]
    follow = [("ick foxtrot golf hotel india", 13), (" juliet", 14)]
    if lag_at_start:
        pieces += [("c" + follow[0][0], 1)]
        follow = follow[1:]
    start, text = anchor(pieces, len(pieces), "".join(t for t, _ in pieces))
    regenerated = [10, 11, 12, 13][start : len(pieces)]
    plan = Continuation(COMPLETIONS_PATH, b"{}", "ids", 5, len(pieces),
                        start=start, anchor=text, regenerated=tuple(regenerated))  # fmt: skip
    rw = Rewriter(CHAT, plan, delivered_of(WITH_IDS))
    repeat = [" alpha bravo charlie delta", " echo", "oc", "ick foxtrot golf hotel india"]
    out = b"".join(rw(completion_event(t, [i])) for t, i in
                   zip(repeat[start : len(pieces)], regenerated, strict=True))  # fmt: skip
    out += b"".join(rw(completion_event(t, [i], "length" if i == 14 else None))
                    for t, i in follow)  # fmt: skip
    sent = "".join(t for t, _ in pieces)
    assert sent + contents(out) == "".join(repeat) + " juliet"  # nothing missing or repeated
    assert rw.tokens == len(follow) and rw.completion_tokens == len(pieces) + len(follow)
