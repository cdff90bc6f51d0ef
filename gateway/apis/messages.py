"""Anthropic's Messages API (``POST /v1/messages``): a top-level ``system`` + ``messages``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.apis.base import Api, StreamFormat, message_contents, named_error_event, text_of
from gateway.errors import OpenAIError
from gateway.request.schema import MessagesRequest


def error_event(err: OpenAIError) -> bytes:
    """Anthropic's error event: an overload is ``overloaded_error`` (its clients retry it)."""
    kind = "overloaded_error" if err.status in (429, 503) else "api_error"
    return named_error_event({"type": "error", "error": {"type": kind, "message": err.message}})


STREAM = StreamFormat(
    (b"event: message_stop",), re.compile(rb'"output_tokens":\s*(\d+)'), 0, error_event,
    named_events=True,
)  # fmt: skip


def leading(body: Mapping[str, Any]) -> Iterable[object]:
    yield body.get("system")
    yield from message_contents(body)


def tokenize_bodies(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The chat messages it stands for; None for content other than text, or tools (their
    schemas differ from Chat's: the engine judges the length itself)."""
    if body.get("tools"):
        return None
    out = []
    if body.get("system") is not None:
        system = text_of(body["system"], ("text",))
        if system is None:
            return None
        out.append({"role": "system", "content": system})
    for msg in body["messages"]:
        text = text_of(msg.get("content"), ("text",))
        if text is None:
            return None
        out.append({"role": msg["role"], "content": text})
    return [{"messages": out, "model": body["model"]}]


API = Api(
    kind="messages", title="Anthropic Messages", path="/v1/messages", schema=MessagesRequest, max_tokens_field="max_tokens",
    prompt_field="messages", stream=STREAM,
    prompt_usage=re.compile(rb'"input_tokens":\s*(\d+)'),
    cached_usage=re.compile(rb'"cache_read_input_tokens":\s*(\d+)'), leading=leading,
    tokenize_bodies=tokenize_bodies,
)  # fmt: skip
