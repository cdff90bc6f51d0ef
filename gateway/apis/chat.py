"""Chat Completions (``POST /v1/chat/completions``), OpenAI's and vLLM's main API."""

from __future__ import annotations

from typing import Any

from gateway.apis.base import (
    OPENAI_CACHED_USAGE,
    OPENAI_PROMPT_USAGE,
    OPENAI_STREAM,
    Api,
    StreamFormat,
    message_contents,
)  # fmt: skip
from gateway.errors import OpenAIError
from gateway.schema import ChatRequest

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


API = Api(
    kind="chat", title="OpenAI Chat Completions", path="/v1/chat/completions", schema=ChatRequest, max_tokens_field="max_tokens",
    prompt_field="messages", stream=STREAM, prompt_usage=OPENAI_PROMPT_USAGE,
    cached_usage=OPENAI_CACHED_USAGE, leading=message_contents, tokenize_bodies=tokenize_bodies,
    stream_options=True, max_tokens_aliases=("max_completion_tokens",),
)  # fmt: skip
