"""Route-for-route parity: the official SDKs through the gateway and straight to the engine.

Each API is called both ways with the same request: the answers must have the same shape (the
tiny model's text is random, so shapes and counts are compared, not text), and what only the
gateway adds (request id, rate headers, Date) or answers itself (model lookup, its refusals) is
checked for OpenAI's conventions. Raw sockets cover what the SDKs cannot send (HTTP/1.0).
"""

from __future__ import annotations

import json
import socket

import anthropic
import httpx
import openai
import pytest

from tests.support.engine import Engine
from tests.support.gateway import RunningGateway

pytestmark = pytest.mark.engine
MODEL = "gemma-4-tiny"
DELTA = "response.output_text.delta"
# The installed anthropic SDK has no temperature argument; the engine reads it from the body.
GREEDY = {"temperature": 0}


def clients(gateway: RunningGateway, engine: Engine) -> dict[str, openai.OpenAI]:
    return {
        "gateway": openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0),
        "engine": openai.OpenAI(base_url=f"{engine.url}/v1", api_key="x", max_retries=0),
    }


def test_responses_api_same_shape_both_ways(gateway: RunningGateway, engine: Engine) -> None:
    shapes = {}
    for name, client in clients(gateway, engine).items():
        r = client.responses.create(model=MODEL, input="Say hi", max_output_tokens=6)
        assert r.object == "response" and r.usage is not None
        assert r.usage.output_tokens == 6  # the tiny model never stops early at 6
        shapes[name] = (r.status, [o.type for o in r.output], sorted(r.model_dump()))
        # GET /v1/responses/{id}: the engine stores responses only with
        # VLLM_ENABLE_RESPONSES_API_STORE=1 (off here), so both ways answer the same 404.
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.retrieve(r.id)
        assert r.id in info.value.message
        if name == "gateway":
            assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert shapes["gateway"] == shapes["engine"]


def test_responses_stream_same_events_both_ways(gateway: RunningGateway, engine: Engine) -> None:
    """Greedy, so both ways generate the same text: the same events in the same order and
    number, the same text. Only the number of text deltas may differ: vLLM merges tokens the
    API server has not sent yet into one delta (a busy machine: 2 deltas one way, 3 the other
    for the same 4 tokens), so a run of deltas counts as one event, holding 1 to 4 of them."""
    seen = {}
    for name, client in clients(gateway, engine).items():
        with client.responses.stream(
            model=MODEL, input="Say hi", max_output_tokens=4, temperature=0
        ) as s:
            events = list(s)
            final = s.get_final_response()
        types = [e.type for e in events]
        assert final.usage.output_tokens == 4
        assert [e.sequence_number for e in events] == list(range(len(events)))
        deltas = [e.delta for e in events if e.type == DELTA]
        assert 1 <= len(deltas) <= 4, types
        runs = [t for i, t in enumerate(types) if not (t == DELTA and i and types[i - 1] == DELTA)]
        seen[name] = (runs, "".join(deltas), final.output_text)
    assert seen["gateway"][0] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", DELTA, "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert seen["gateway"] == seen["engine"]


def test_messages_api_same_shape_both_ways(gateway: RunningGateway, engine: Engine) -> None:
    shapes = {}
    for name, base in (("gateway", gateway.url), ("engine", engine.url)):
        client = anthropic.Anthropic(base_url=base, api_key="x", max_retries=0)
        # Greedy: sampled, the tiny model's random weights can end a turn early (a CI run got
        # 4 tokens of 5, and then the stop reasons of the two ways differ by chance).
        msg = client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_body=GREEDY,
        )
        assert msg.type == "message" and msg.usage.output_tokens == 5
        with client.messages.stream(
            model=MODEL,
            max_tokens=3,
            messages=[{"role": "user", "content": "hi"}],
            extra_body=GREEDY,
        ) as stream:
            final = stream.get_final_message()
        assert final.usage.output_tokens == 3
        counted = client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        shapes[name] = (msg.stop_reason, [b.type for b in msg.content], counted.input_tokens)
    assert shapes["gateway"] == shapes["engine"]


def test_model_retrieve_and_unknown_model(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_gateway_headers_on_a_completion(gateway: RunningGateway) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200
    assert r.headers["date"].endswith(" GMT")
    assert int(r.headers["x-ratelimit-limit-requests"]) == 4  # the test gateway's cap
    assert 0 <= int(r.headers["x-ratelimit-remaining-requests"]) < 4
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")


def test_engine_errors_arrive_in_openai_shape(gateway: RunningGateway, engine: Engine) -> None:
    """vLLM's own error ("type": "BadRequestError", integer code) reshaped, message kept."""
    bad = {"model": MODEL, "prompt": 5}  # /tokenize passes through to the engine
    direct = httpx.post(f"{engine.url}/tokenize", json=bad, timeout=30)
    via = httpx.post(f"{gateway.url}/tokenize", json=bad, timeout=30)
    assert direct.status_code == via.status_code and 400 <= via.status_code < 500
    err = via.json()["error"]
    assert err["type"] == "invalid_request_error" and not isinstance(err["code"], int)
    assert err["message"] == direct.json()["error"]["message"]
    assert direct.json()["error"]["type"] == "Bad Request"  # what the engine itself says


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_http10_stream_is_refused_clearly_and_plain_answers_work(gateway: RunningGateway) -> None:
    def req(stream: bool) -> bytes:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                           "max_tokens": 2, "stream": stream}).encode()  # fmt: skip
        return (b"POST /v1/chat/completions HTTP/1.0\r\nHost: gw\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body))  # fmt: skip

    head, _, body = raw_http(gateway.port, req(True)).partition(b"\r\n\r\n")
    assert b" 400 " in head.split(b"\r\n")[0]
    assert json.loads(body)["error"]["code"] == "stream_needs_http11"
    head, _, body = raw_http(gateway.port, req(False)).partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"transfer-encoding" not in head.lower()
    assert json.loads(body)["object"] == "chat.completion"
