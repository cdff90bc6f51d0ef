"""Chat Completions (``POST /v1/chat/completions``), OpenAI's and vLLM's main API."""

from __future__ import annotations

from typing import Any

from gateway.apis.base import (
    OPENAI_CACHED_USAGE,
    OPENAI_PROMPT_USAGE,
    OPENAI_STREAM,
    Api,
    Resume,
    StreamFormat,
    message_contents,
)  # fmt: skip
from gateway.errors import OpenAIError
from gateway.request.schema import ChatRequest

# Request fields that change the rendered prompt: what ``/tokenize`` must get to count the same.
TEMPLATE_KEYS = (
    "messages", "tools", "add_generation_prompt", "continue_final_message",
    "add_special_tokens", "chat_template", "chat_template_kwargs", "documents",
    "mm_processor_kwargs",
)  # fmt: skip

# The first event carries the assistant's role and no token.
STREAM = StreamFormat(OPENAI_STREAM.done_markers, OPENAI_STREAM.usage, 1, OpenAIError.sse_event)


def tokenize_bodies(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request as sent, less what does not change the prompt."""
    return [{"model": body["model"], **{k: body[k] for k in TEMPLATE_KEYS if k in body}}]


def exact(body: dict[str, Any]) -> bool:
    """Whether a token-id continuation on /v1/completions can stand in for this request: not
    with media (the ids hold placeholders, not the images), tools (the tool-call parser) or
    logprobs (chat's format), which only the chat endpoint does."""
    if body.get("tools") or body.get("logprobs") or body.get("documents"):
        return False
    for content in message_contents(body):
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") != "text" for p in content
        ):
            return False
    return True


def alternatives(body: dict[str, Any]) -> bool:
    return bool(body.get("logprobs")) and bool(body.get("top_logprobs"))


def from_text(body: dict[str, Any], text: str) -> dict[str, Any]:
    """The messages with the partial assistant message last, continued by vLLM's own fields
    (extending the client's prefill when it sent one with ``continue_final_message``)."""
    messages = list(body.get("messages") or ())
    last = messages[-1] if messages else None
    if (
        body.get("continue_final_message") and isinstance(last, dict)
        and last.get("role") == "assistant"
    ):  # fmt: skip
        content = last.get("content")
        if isinstance(content, list):
            content = [*content, {"type": "text", "text": text}]
        else:
            content = (content or "") + text
        messages[-1] = {**last, "content": content}
    else:
        messages.append({"role": "assistant", "content": text})
    return {**body, "messages": messages, "continue_final_message": True,
            "add_generation_prompt": False}  # fmt: skip


API = Api(
    kind="chat", title="OpenAI Chat Completions", path="/v1/chat/completions", schema=ChatRequest, max_tokens_field="max_tokens",
    prompt_field="messages", stream=STREAM, prompt_usage=OPENAI_PROMPT_USAGE,
    cached_usage=OPENAI_CACHED_USAGE, leading=message_contents, tokenize_bodies=tokenize_bodies,
    stream_options=True, max_tokens_aliases=("max_completion_tokens",),
    resume=Resume("chat.completion.chunk", True, exact, alternatives, from_text),
)  # fmt: skip
