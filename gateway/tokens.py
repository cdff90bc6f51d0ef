"""Prompt token counting with the engine's own tokenizer and chat template (``/tokenize``).

Counting with anything else (a character heuristic, another tokenizer) makes the context-length
check wrong exactly at the boundary, which is where it matters. vLLM's ``/tokenize`` renders the
chat template with the same tools and template arguments as the real request, so its count is
the one the engine will see. It only runs when ``validation.needs_count`` says the prompt could
break a limit; short prompts never pay for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx

from gateway.errors import OpenAIError, engine_message
from gateway.upstream import upstream_error
from gateway.validation import Parsed

# Chat request fields that change the rendered prompt, forwarded to /tokenize.
_CHAT_KEYS = (
    "messages",
    "tools",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "chat_template",
    "chat_template_kwargs",
    "documents",
    "mm_processor_kwargs",
)


class TokenCounter:
    """Counts on whichever replica ``client()`` returns (they share one tokenizer)."""

    def __init__(self, client: Callable[[], httpx.AsyncClient], timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def count(self, parsed: Parsed, request_id: str) -> int | None:
        """Prompt tokens of the request (the longest prompt for batched completions); None when
        the request cannot be put to ``/tokenize`` as it is (a Responses or Messages input
        with items other than text messages): the engine then judges its length itself."""
        body = parsed.body
        if parsed.kind != "completions":
            payload = chat_payload(parsed)
            if payload is None:
                return None
            return await self._tokenize(payload, request_id, parsed.api.prompt_field)
        prompts = parsed.prompt_strings
        counts = await asyncio.gather(
            *(
                self._tokenize({"model": body["model"], "prompt": p}, request_id, "prompt")
                for p in prompts
            )
        )
        return max(counts)

    async def ids(self, parsed: Parsed, request_id: str) -> list[int] | None:
        """The prompt's token ids as the engine will see them (for the ``kv`` routing policy),
        or None when they would not name the engine's cache blocks faithfully: a batch of
        prompts, media (its blocks hash with the media's identity), a ``cache_salt``, a body
        ``/tokenize`` cannot render, or a failed call (routing then falls back; the request
        itself is not failed by it)."""
        body = parsed.body
        if body.get("cache_salt") is not None or _has_media(body):
            return None
        if parsed.kind == "completions":
            prompts = parsed.prompt_strings
            if len(prompts) != 1 or isinstance(body.get("prompt"), list):
                return None
            payload: dict[str, Any] | None = {"model": body["model"], "prompt": prompts[0]}
        else:
            payload = chat_payload(parsed)
        if payload is None:
            return None
        try:
            data = await self._post(payload, request_id)
        except OpenAIError:
            return None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            return None
        return tokens

    async def _tokenize(self, payload: dict[str, Any], request_id: str, param: str) -> int:
        r = await self._send(payload, request_id)
        if r.status_code == 200:
            try:
                return int(r.json()["count"])
            except (ValueError, KeyError, TypeError):
                raise OpenAIError(502, "bad /tokenize answer from the engine") from None
        raise _refused(r, param)

    async def _post(self, payload: dict[str, Any], request_id: str) -> Any:
        r = await self._send(payload, request_id)
        if r.status_code != 200:
            raise _refused(r, "messages")
        try:
            return r.json()
        except ValueError:
            raise OpenAIError(502, "bad /tokenize answer from the engine") from None

    async def _send(self, payload: dict[str, Any], request_id: str) -> httpx.Response:
        content = json.dumps(payload).encode()
        headers = {"content-type": "application/json", "x-request-id": request_id}
        try:
            try:
                r = await self.client().post(
                    "/tokenize", content=content, headers=headers, timeout=self.timeout_s
                )
            except httpx.ConnectError:  # that replica just died: the next one in turn counts
                r = await self.client().post(
                    "/tokenize", content=content, headers=headers, timeout=self.timeout_s
                )
        except httpx.HTTPError as exc:
            raise upstream_error(exc, counting=True) from None
        return r


def _refused(r: httpx.Response, param: str) -> OpenAIError:
    """The engine rejected the prompt itself (bad message structure, bad template args): a
    client error, reported with the engine's own message; or it failed to tokenize."""
    message = engine_message(r.content) or f"HTTP {r.status_code}"
    if 400 <= r.status_code < 500:
        return_status = 400 if r.status_code != 404 else 404
        return OpenAIError(return_status, message, code="invalid_prompt", param=param)
    return OpenAIError(503, f"the engine failed to count the prompt: {message}",
                       code="engine_error", retry_after=5)  # fmt: skip


def _has_media(body: dict[str, Any]) -> bool:
    """Any content part that is not text (images, audio: their blocks hash differently)."""
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") not in ("text", "input_text", "output_text")
            for p in content
        ):
            return True
    return False


def chat_payload(parsed: Parsed) -> dict[str, Any] | None:
    """The ``/tokenize`` chat body that renders the same prompt as the request (None: no
    faithful one). Chat as sent; Messages and Responses as the chat messages they stand for."""
    body = parsed.body
    if parsed.kind == "chat":
        payload = {k: body[k] for k in _CHAT_KEYS if k in body}
    elif parsed.kind == "messages":
        msgs = _anthropic_messages(body)
        if msgs is None:
            return None
        payload = {"messages": msgs}
    else:
        msgs = _responses_messages(body)
        if msgs is None:
            return None
        payload = {"messages": msgs}
    if parsed.kind != "chat" and body.get("tools"):
        return None  # tool schemas differ per API: let the engine judge
    payload["model"] = body["model"]
    return payload


def _text(content: Any, text_types: tuple[str, ...]) -> str | None:
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


def _anthropic_messages(body: dict[str, Any]) -> list[dict[str, str]] | None:
    out = []
    if body.get("system") is not None:
        system = _text(body["system"], ("text",))
        if system is None:
            return None
        out.append({"role": "system", "content": system})
    for msg in body["messages"]:
        text = _text(msg.get("content"), ("text",))
        if text is None:
            return None
        out.append({"role": msg["role"], "content": text})
    return out


def _responses_messages(body: dict[str, Any]) -> list[dict[str, str]] | None:
    out = []
    if body.get("instructions"):
        out.append({"role": "system", "content": str(body["instructions"])})
    items = body["input"]
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    for item in items:
        if item.get("type", "message") != "message" or "role" not in item:
            return None
        text = _text(item.get("content"), ("input_text", "output_text", "text"))
        if text is None:
            return None
        out.append({"role": str(item["role"]), "content": text})
    return out
