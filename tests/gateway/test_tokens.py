"""Prompt counting through the engine's /tokenize, against an in-process fake (httpx's
MockTransport): what is sent, and how each kind of engine answer becomes the client's error."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.errors import OpenAIError
from gateway.request.tokens import TokenCounter
from gateway.request.validation import parse
from tests.gateway.test_validation import CPU, MODEL

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def counter(handler) -> tuple[TokenCounter, list[dict]]:  # type: ignore[no-untyped-def]
    seen: list[dict] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append({"path": request.url.path, "body": json.loads(request.content),
                     "rid": request.headers.get("x-request-id")})  # fmt: skip
        return handler(request)

    client = httpx.AsyncClient(base_url="http://engine", transport=httpx.MockTransport(record))
    return TokenCounter(lambda: client, 5.0), seen


def chat(**kw: object):  # type: ignore[no-untyped-def]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kw}
    return parse("chat", json.dumps(body).encode(), CPU)


async def test_chat_sends_what_changes_the_rendered_prompt() -> None:
    tc, seen = counter(lambda r: httpx.Response(200, json={"count": 42}))
    tools = [{"type": "function", "function": {"name": "f"}}]
    parsed = chat(tools=tools, chat_template_kwargs={"enable_thinking": True}, temperature=0.5)
    assert await tc.count(parsed, "rid-9") == 42
    (call,) = seen
    assert call["path"] == "/tokenize" and call["rid"] == "rid-9"
    assert set(call["body"]) == {"model", "messages", "tools", "chat_template_kwargs"}


async def test_batched_completion_prompts_count_the_longest() -> None:
    tc, seen = counter(
        lambda r: httpx.Response(200, json={"count": len(json.loads(r.content)["prompt"])})
    )
    body = {"model": MODEL, "prompt": ["ab", "abcdef", "abc"]}
    parsed = parse("completions", json.dumps(body).encode(), CPU)
    assert await tc.count(parsed, "r") == 6
    assert sorted(c["body"]["prompt"] for c in seen) == ["ab", "abc", "abcdef"]


@pytest.mark.parametrize(
    "answer,status,code",
    [
        (
            httpx.Response(400, json={"error": {"message": "bad role", "code": 400}}),
            400,
            "invalid_prompt",
        ),
        (httpx.Response(404, json={"error": {"message": "no model"}}), 404, "invalid_prompt"),
        (httpx.Response(500, text="Internal Server Error"), 503, "engine_error"),
        (httpx.Response(200, json={"tokens": []}), 502, None),
    ],
)
async def test_engine_answers_become_client_errors(
    answer: httpx.Response, status: int, code: str | None
) -> None:
    tc, _ = counter(lambda r: answer)
    with pytest.raises(OpenAIError) as info:
        await tc.count(chat(), "r")
    assert (info.value.status, info.value.code) == (status, code)
    if status == 400:
        assert info.value.message == "bad role" and info.value.param == "messages"


@pytest.mark.parametrize(
    "exc,code",
    [(httpx.ReadTimeout("slow"), "tokenize_timeout"), (httpx.ConnectError("no"), "engine_down")],
)
async def test_transport_failures_are_503s_with_retry_after(exc: Exception, code: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    tc, _ = counter(fail)
    with pytest.raises(OpenAIError) as info:
        await tc.count(chat(), "r")
    assert (info.value.status, info.value.code) == (503, code) and info.value.retry_after == 5


async def test_token_ids_for_kv_routing_only_when_they_name_the_engines_blocks() -> None:
    """``ids``: the engine's token ids of one prompt; None (routing falls back, the request is
    not failed) for a batch, media, a cache salt, or an engine that does not answer."""
    tc, seen = counter(lambda r: httpx.Response(200, json={"count": 3, "tokens": [5, 6, 7]}))
    assert await tc.ids(chat(), "r") == [5, 6, 7]
    assert seen[0]["body"]["messages"] == [{"role": "user", "content": "hi"}]
    one = parse("completions", json.dumps({"model": MODEL, "prompt": "abc"}).encode(), CPU)
    assert await tc.ids(one, "r") == [5, 6, 7] and seen[1]["body"]["prompt"] == "abc"
    batch = parse("completions", json.dumps({"model": MODEL, "prompt": ["a", "b"]}).encode(), CPU)
    salted = chat(cache_salt="tenant-a")
    for parsed in (batch, salted):
        assert await tc.ids(parsed, "r") is None
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    media = chat()  # this profile refuses images at parse: the body as a vision profile has it
    media.body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "x"}, image]}]
    assert await tc.ids(media, "r") is None
    assert len(seen) == 2  # none of those asked the engine
    down, _ = counter(lambda r: httpx.Response(500, json={"error": {"message": "boom"}}))
    assert await down.ids(chat(), "r") is None
