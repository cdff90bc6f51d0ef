"""What the client of a resumable stream has received: kept raw, read only when needed.

The relay appends the whole events it sends (``upstream.EventFilter``: one ``list.append`` per
piece, no parsing); a continuation reads them once, at the break, into a ``Delivered``: the
stream's identity (``id``, ``created``, ``model``), the text and token ids of choice 0 (also per
event: what text came with how many tokens, for ``continuation.anchor``), how many tokens that
was, whether the generation had already ended, and what the gateway cannot continue faithfully
(a tool call, reasoning, top logprobs already sent). A very long stream is folded into
its ``Delivered`` every ``FOLD_BYTES`` (parsed then, once, and the bytes let go), so memory stays
bounded whatever ``max_tokens`` is: at ~270 bytes an event (token ids included) a stream under
~1,000 tokens is never parsed unless it breaks.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Any

FOLD_BYTES = 256 * 1024
PIECES = 65  # token events kept one by one: continuation.MAX_BACKOFF + 1
_EVENT_END = re.compile(rb"\r?\n\r?\n")


class Delivered:
    """The parsed transcript: what a continuation must start from."""

    __slots__ = (
        "events", "finish_reason", "head", "logprob_alternatives", "pieces", "prompt_ids",
        "reasoning", "role_sent", "text", "token_ids", "tokens", "tool_calls",
    )  # fmt: skip

    def __init__(self) -> None:
        self.head: dict[str, Any] | None = None  # id, object, created, model of the first event
        self.prompt_ids: list[int] | None = None  # vLLM's prompt_token_ids, when it sent them
        self.text: list[str] = []  # choice 0's content (chat) or text (completions), in pieces
        # The last token events: (text, tokens) each. The text can lag the tokens: vLLM holds
        # back an incomplete UTF-8 character, and chat's parsers a few characters (a "c" that
        # could start a tool call), and sends them with a later event.
        self.pieces: deque[tuple[str, int]] = deque(maxlen=PIECES)
        self.token_ids: list[int] | None = []  # None once an event came without its ids
        self.tokens = 0  # generated tokens sent (ids when known, else one per event)
        self.finish_reason: str | None = None
        self.role_sent = False  # chat: the role event reached the client
        self.tool_calls = False
        self.reasoning = False
        self.logprob_alternatives = False
        self.events = 0

    @property
    def content(self) -> str:
        return "".join(self.text)

    def add(self, raw: bytes) -> None:
        """Whole SSE events (an unparsable one is skipped: the client could not use it either)."""
        for event in _EVENT_END.split(raw):
            data = b"".join(
                line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")
            )
            if not data or data == b"[DONE]":
                continue
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict):
                self._event(obj)

    def _event(self, obj: dict[str, Any]) -> None:
        self.events += 1
        if self.head is None and "id" in obj:
            self.head = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        if isinstance(obj.get("prompt_token_ids"), list):  # chat: on the role event
            self.prompt_ids = obj["prompt_token_ids"]
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        if isinstance(choice.get("prompt_token_ids"), list):  # completions: on the first event
            self.prompt_ids = choice["prompt_token_ids"]
        delta = choice.get("delta")
        if isinstance(delta, dict):  # chat
            piece = delta.get("content")
            self.role_sent = self.role_sent or "role" in delta
            self.tool_calls = self.tool_calls or bool(delta.get("tool_calls"))
            self.reasoning = self.reasoning or bool(
                delta.get("reasoning") or delta.get("reasoning_content")
            )
            token_event = "role" not in delta or bool(piece) or "token_ids" in choice
        else:  # completions
            piece = choice.get("text")
            token_event = True
        if isinstance(piece, str) and piece:
            self.text.append(piece)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and _has_alternatives(logprobs):
            self.logprob_alternatives = True
        ids = choice.get("token_ids")
        if isinstance(ids, list):
            if self.token_ids is not None:
                self.token_ids.extend(ids)
            self.tokens += len(ids)
            self.pieces.append((piece if isinstance(piece, str) else "", len(ids)))
        elif token_event:
            self.token_ids = None  # a token the gateway cannot name: continue from text
            self.tokens += 1
            self.pieces.append((piece if isinstance(piece, str) else "", 1))
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])


def _has_alternatives(logprobs: dict[str, Any]) -> bool:
    """Top alternatives were sent: chat's ``content[].top_logprobs``, completions'
    ``top_logprobs`` (a list of dicts with more than the chosen token)."""
    content = logprobs.get("content")
    if isinstance(content, list):
        return any(isinstance(c, dict) and c.get("top_logprobs") for c in content)
    top = logprobs.get("top_logprobs")
    return isinstance(top, list) and any(isinstance(t, dict) and len(t) > 1 for t in top)


class Transcript:
    """The events a resumable stream's client was sent (``upstream.Capture``)."""

    __slots__ = ("_delivered", "_pieces", "_size")

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0
        self._delivered = Delivered()

    def append(self, events: bytes) -> None:
        self._pieces.append(events)
        self._size += len(events)
        if self._size > FOLD_BYTES:
            self._fold()

    def _fold(self) -> None:
        for piece in self._pieces:
            self._delivered.add(piece)
        self._pieces.clear()
        self._size = 0

    def delivered(self) -> Delivered:
        """Everything sent so far, parsed (it keeps accumulating as more is appended)."""
        self._fold()
        return self._delivered

    @property
    def kept_bytes(self) -> int:
        return self._size
