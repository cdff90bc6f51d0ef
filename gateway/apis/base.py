"""What one generation API is, as the gateway sees it: the ``Api`` description and its parts.

Each API (``chat``, ``completions``, ``responses``, ``messages``) is one module of this package
holding one ``Api``; the service, validation, tenancy, routing and the token counter ask it
instead of branching on the API's name. Only the shape lives here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from gateway.errors import OpenAIError

Kind = Literal["chat", "completions", "responses", "messages"]


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


# The OpenAI stream (Completions; Chat adds one role event): ``data: [DONE]`` ends it.
OPENAI_STREAM = StreamFormat(
    (b"data: [DONE]",), re.compile(rb'"usage":\{[^{}]*?"completion_tokens":(\d+)'), 0,
    OpenAIError.sse_event,
)  # fmt: skip
# OpenAI's usage object (Chat and Completions): prompt tokens, cached prompt tokens.
OPENAI_PROMPT_USAGE = re.compile(rb'"prompt_tokens":\s*(\d+)')
OPENAI_CACHED_USAGE = re.compile(rb'"cached_tokens":\s*(\d+)')


def named_error_event(data: Mapping[str, Any]) -> bytes:
    """A terminal ``event: error`` of the named-event APIs (Responses, Messages)."""
    return b"event: error\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True)
class Resume:
    """How a stream of this API is continued on another replica after its first byte
    (``gateway/resume/``): its chunks' shape and the continuation requests it allows."""

    chunk_object: str  # the chunks' ``object``
    deltas: bool  # choices carry ``delta`` (after a role event), else ``text``
    exact: Callable[[Mapping[str, Any]], bool]  # continued from token ids on /v1/completions
    alternatives: Callable[[Mapping[str, Any]], bool]  # the request asks for top logprobs
    # The request continuing from the text the client has (None: it cannot be).
    from_text: Callable[[dict[str, Any], str], dict[str, Any] | None]
    keep: tuple[str, ...] = ()  # its own fields a token-id continuation keeps


@dataclass(frozen=True)
class Api:
    """One generation API. ``leading`` yields, in prompt order, the values whose text makes the
    routing affinity key; ``tokenize_bodies`` gives the engine ``/tokenize`` bodies that render
    the same prompt(s) (one per prompt; None when none would be faithful)."""

    kind: Kind
    title: str  # the route's summary in the OpenAPI description
    path: str
    schema: type[BaseModel]
    max_tokens_field: str  # where the gateway writes its default max_tokens
    prompt_field: str  # the parameter a prompt-too-long error names
    stream: StreamFormat
    prompt_usage: re.Pattern[bytes]  # prompt tokens in the engine's usage (the last match)
    cached_usage: re.Pattern[bytes]  # cached prompt tokens in it
    leading: Callable[[Mapping[str, Any]], Iterable[object]]
    tokenize_bodies: Callable[[dict[str, Any]], list[dict[str, Any]] | None]
    stream_options: bool = False  # takes ``stream_options.include_usage`` (OpenAI's own two)
    max_tokens_aliases: tuple[str, ...] = ()  # other names a client may set the length with
    resume: Resume | None = None  # None: a stream that breaks ends (gateway/resume/)

    def max_tokens_param(self, body: Mapping[str, Any]) -> str:
        """The parameter the client set (or would set) for the generation length."""
        for alias in self.max_tokens_aliases:
            if body.get(alias) is not None:
                return alias
        return self.max_tokens_field


def text_of(content: Any, text_types: tuple[str, ...]) -> str | None:
    """A message's content as text, or None when it holds anything but text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in text_types:
            return None
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def message_contents(body: Mapping[str, Any]) -> Iterable[object]:
    """Each message's ``content``, in order (Chat's and Messages' ``messages``)."""
    for m in body.get("messages") or ():
        if isinstance(m, dict):
            yield m.get("content")
