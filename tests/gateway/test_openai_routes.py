"""The official ``openai`` client works unchanged through the gateway (real CPU engine)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.conftest import engine_metric
from tests.support.engine import Engine
from tests.support.gateway import RunningGateway
from tests.support.sse import error_events

pytestmark = pytest.mark.engine
MODEL = "gemma-4-tiny"


@pytest.fixture()
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_non_stream(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_completions_stream_and_non_stream(client: openai.OpenAI) -> None:
    """Greedy and past EOS: both ways generate exactly 6 tokens, and the stream's pieces put
    together are the non-streamed text (the relay drops and adds nothing)."""
    greedy = {"model": MODEL, "prompt": "Once", "max_tokens": 6, "temperature": 0,
              "extra_body": {"ignore_eos": True}}  # fmt: skip
    r = client.completions.create(**greedy)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    pieces = list(
        client.completions.create(**greedy, stream=True, stream_options={"include_usage": True})
    )
    assert all(p.object == "text_completion" and p.id == pieces[0].id for p in pieces)
    text = [p.choices[0] for p in pieces if p.choices]
    assert "".join(c.text for c in text) == r.choices[0].text
    assert [c.finish_reason for c in text][-1] == "length"
    assert all(c.finish_reason is None for c in text[:-1])
    assert pieces[-1].choices == [] and pieces[-1].usage.completion_tokens == 6


def test_tools_request(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tool_choice="auto",
        max_tokens=16,
    )
    # A random-weight model rarely calls the tool: whichever way it ends, the answer must be
    # consistent with how it ended.
    choice = r.choices[0]
    if choice.finish_reason == "tool_calls":
        assert [c.function.name for c in choice.message.tool_calls or []] == ["get_weather"]
    elif choice.finish_reason == "length":
        assert r.usage is not None and r.usage.completion_tokens == 16
        assert not choice.message.tool_calls
    else:
        assert choice.finish_reason == "stop", choice.finish_reason
        assert not choice.message.tool_calls


def test_models_and_request_id(gateway: RunningGateway, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"X-Request-Id": "test-rid-123"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "test-rid-123"
    assert "test-rid-123" in r.json()["id"]  # passed upstream: vLLM names the request by it
    generated = httpx.post(f"{gateway.url}/v1/chat/completions", json={}, timeout=10)
    assert len(generated.headers["x-request-id"]) >= 16


def test_tokenize_passthrough(gateway: RunningGateway) -> None:
    r = httpx.post(
        f"{gateway.url}/tokenize", json={"model": MODEL, "prompt": "hello world"}, timeout=10
    )
    assert r.status_code == 200 and r.json()["count"] >= 1


def _chat_prompt_tokens(engine: Engine, content: str) -> int:
    r = httpx.post(
        f"{engine.url}/tokenize",
        json={"model": MODEL, "messages": [{"role": "user", "content": content}]},
        timeout=10,
    )
    return int(r.json()["count"])


def test_context_boundary_exact_passes_one_over_is_refused_before_the_engine(
    gateway: RunningGateway, engine: Engine
) -> None:
    limit = engine.settings.max_model_len
    content = " ".join(["tree"] * 1500)  # long enough that the gateway must count it
    prompt = _chat_prompt_tokens(engine, content)
    assert prompt < engine.settings.prompt_limit
    room = limit - prompt
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True}

    def engine_chat_requests() -> float:
        return engine_metric(engine.url, "http_requests_total", handler="/v1/chat/completions")

    before = engine_chat_requests()
    over = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={**body, "max_tokens": room + 1}, timeout=30
    )
    assert over.status_code == 400
    err = over.json()["error"]
    assert (err["code"], err["param"]) == ("context_length_exceeded", "max_tokens")
    assert f"at most {room}" in err["message"]
    assert engine_chat_requests() == before  # refused before reaching the engine

    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions",
        json={**body, "max_tokens": room, "ignore_eos": True}, timeout=60,
    ) as exact:  # fmt: skip
        assert exact.status_code == 200
        events = [line for line in exact.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not error_events(events)
