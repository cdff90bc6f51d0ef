"""OpenAI's Responses API (``POST /v1/responses``): ``instructions`` + ``input`` items."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.apis.base import Api, StreamFormat, named_error_event, text_of
from gateway.errors import OpenAIError
from gateway.request.schema import ResponsesRequest


def error_event(err: OpenAIError) -> bytes:
    return named_error_event(
        {"type": "error", "code": err.code, "message": err.message, "param": err.param}
    )


STREAM = StreamFormat(
    (b"event: response.completed", b"event: response.incomplete", b"event: response.failed"),
    re.compile(rb'"output_tokens":\s*(\d+)'), 0, error_event, named_events=True,
)  # fmt: skip


def leading(body: Mapping[str, Any]) -> Iterable[object]:
    return (body.get("instructions"), body.get("input"))


def tokenize_bodies(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The chat messages the input stands for; None for items other than text messages, or
    tools (their schemas differ from Chat's: the engine judges the length itself)."""
    if body.get("tools"):
        return None
    out = []
    if body.get("instructions"):
        out.append({"role": "system", "content": str(body["instructions"])})
    items = body["input"]
    if isinstance(items, str):
        out.append({"role": "user", "content": items})
    else:
        for item in items:
            if item.get("type", "message") != "message" or "role" not in item:
                return None
            text = text_of(item.get("content"), ("input_text", "output_text", "text"))
            if text is None:
                return None
            out.append({"role": str(item["role"]), "content": text})
    return [{"messages": out, "model": body["model"]}]


API = Api(
    kind="responses", title="OpenAI Responses", path="/v1/responses", schema=ResponsesRequest,
    max_tokens_field="max_output_tokens", prompt_field="input", stream=STREAM,
    prompt_usage=re.compile(rb'"input_tokens":\s*(\d+)'),
    cached_usage=re.compile(rb'"cached_tokens":\s*(\d+)'), leading=leading,
    tokenize_bodies=tokenize_bodies,
)  # fmt: skip
