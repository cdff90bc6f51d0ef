"""The generation APIs the gateway serves, one description each: path, schema, stream format.

Chat Completions, legacy Completions, OpenAI's Responses and Anthropic's Messages all go the same
way through the gateway (validate, count, admit, forward, relay the engine's bytes). What differs
is declared here, once: the request schema, where ``max_tokens`` lives (and so where the default
is written and which parameter a context error names), how the stream ends (``data: [DONE]`` vs
a final named event), where the usage is, and how a terminal error is framed for that API's
clients.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from gateway.errors import OpenAIError
from gateway.schema import ChatRequest, CompletionRequest, MessagesRequest, ResponsesRequest

Kind = Literal["chat", "completions", "responses", "messages"]


def _responses_error_event(err: OpenAIError) -> bytes:
    data = {"type": "error", "code": err.code, "message": err.message, "param": err.param}
    return b"event: error\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _anthropic_error_event(err: OpenAIError) -> bytes:
    kind = "overloaded_error" if err.status in (429, 503) else "api_error"
    data = {"type": "error", "error": {"type": kind, "message": err.message}}
    return b"event: error\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True)
class StreamFormat:
    """How one API's SSE stream ends and reports usage (read once, from the stream's tail)."""

    done_markers: tuple[bytes, ...]  # the last event is one of these: a normal end
    usage: re.Pattern[bytes]  # completion tokens in the final usage (the last match)
    role_events: int  # events that carry no token (for the count without a usage event)
    error_event: Callable[[OpenAIError], bytes]  # a terminal error, framed for this API
    named_events: bool = False  # ``event: <name>`` lines (else ``data: [DONE]`` ends it)

    def finished(self, tail: bytes) -> bool:
        """Whether the stream's last event is a normal end (model output is JSON-escaped, so a
        line start inside the data cannot fake one)."""
        if not self.named_events:
            return any(m in tail[-64:] for m in self.done_markers)
        start = tail.rfind(b"\nevent: ") + 1  # 0 when the tail starts with the last event
        end = tail.find(b"\n", start)
        return tail[start : end if end >= 0 else len(tail)] in self.done_markers


OPENAI_STREAM = StreamFormat(
    (b"data: [DONE]",), re.compile(rb'"usage":\{[^{}]*?"completion_tokens":(\d+)'), 0,
    OpenAIError.sse_event,
)  # fmt: skip
CHAT_STREAM = StreamFormat(
    OPENAI_STREAM.done_markers, OPENAI_STREAM.usage, 1, OpenAIError.sse_event
)  # fmt: skip
RESPONSES_STREAM = StreamFormat(
    (b"event: response.completed", b"event: response.incomplete", b"event: response.failed"),
    re.compile(rb'"output_tokens":\s*(\d+)'), 0, _responses_error_event, named_events=True,
)  # fmt: skip
MESSAGES_STREAM = StreamFormat(
    (b"event: message_stop",), re.compile(rb'"output_tokens":\s*(\d+)'), 0,
    _anthropic_error_event, named_events=True,
)  # fmt: skip


@dataclass(frozen=True)
class Api:
    kind: Kind
    path: str
    schema: type[BaseModel]
    max_tokens_field: str  # where the gateway writes its default max_tokens
    prompt_field: str  # the parameter a prompt-too-long error names
    stream: StreamFormat


APIS: dict[Kind, Api] = {
    "chat": Api("chat", "/v1/chat/completions", ChatRequest, "max_tokens", "messages",
                CHAT_STREAM),
    "completions": Api("completions", "/v1/completions", CompletionRequest, "max_tokens",
                       "prompt", OPENAI_STREAM),
    "responses": Api("responses", "/v1/responses", ResponsesRequest, "max_output_tokens",
                     "input", RESPONSES_STREAM),
    "messages": Api("messages", "/v1/messages", MessagesRequest, "max_tokens", "messages",
                    MESSAGES_STREAM),
}  # fmt: skip
