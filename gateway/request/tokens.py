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

from gateway.errors import OpenAIError
from gateway.request.validation import Parsed
from gateway.upstream.relay import upstream_error
from protocol.engine_errors import engine_message

# The kv routing policy's /tokenize: a slow engine makes it route as prefix, not wait (10 s).
ROUTING_TIMEOUT_S = 1.0


class TokenCounter:
    """Counts on whichever replica ``client()`` returns (they share one tokenizer)."""

    def __init__(self, client: Callable[[], httpx.AsyncClient], timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def count(self, parsed: Parsed, request_id: str) -> int | None:
        """Prompt tokens of the request (the longest prompt for batched completions); None when
        the request cannot be put to ``/tokenize`` as it is (a Responses or Messages input
        with items other than text messages): the engine then judges its length itself."""
        bodies = parsed.api.tokenize_bodies(parsed.body)
        if not bodies:
            return None
        param = parsed.api.prompt_field
        counts = await asyncio.gather(*(self._tokenize(b, request_id, param) for b in bodies))
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
        bodies = parsed.api.tokenize_bodies(body)
        if bodies is None or len(bodies) != 1:
            return None
        try:
            data = await self._post(bodies[0], request_id, min(self.timeout_s, ROUTING_TIMEOUT_S))
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

    async def _post(self, payload: dict[str, Any], request_id: str, timeout_s: float) -> Any:
        r = await self._send(payload, request_id, timeout_s)
        if r.status_code != 200:
            raise _refused(r, "messages")
        try:
            return r.json()
        except ValueError:
            raise OpenAIError(502, "bad /tokenize answer from the engine") from None

    async def _send(
        self, payload: dict[str, Any], request_id: str, timeout_s: float | None = None
    ) -> httpx.Response:
        timeout = timeout_s or self.timeout_s
        content = json.dumps(payload).encode()
        headers = {"content-type": "application/json", "x-request-id": request_id}
        try:
            try:
                r = await self.client().post(
                    "/tokenize", content=content, headers=headers, timeout=timeout
                )
            except httpx.ConnectError:  # that replica just died: the next one in turn counts
                r = await self.client().post(
                    "/tokenize", content=content, headers=headers, timeout=timeout
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
