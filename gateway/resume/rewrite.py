"""A continuation's events, rewritten so the client sees one uninterrupted stream.

Each event of the continuation is parsed (this runs only after a break) and written back the way
the original stream would have sent it: the original ``id``, ``created`` and ``model``, choice
index 0; chat's role event is not sent twice; a completions continuation of a chat request
becomes chat chunks (``delta.content``, vLLM's field order); the continuation's own
``prompt_token_ids`` are nulled (the client has the original's). The usage event is the
stream's one final usage: the original prompt counted once, completion tokens = what the client
was really sent (before the break + the continuation's). Also writes the end of a stream whose
generation had already ended (``ending``).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from gateway.apis.base import Resume
from gateway.resume.continuation import MAX_LAG, Continuation, Finished
from gateway.resume.transcript import Delivered

log = logging.getLogger("gateway.resume")
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_DONE = b"data: [DONE]\n\n"


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    """vLLM's order of the usage fields."""
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
            "completion_tokens": completion}  # fmt: skip


class Rewriter:
    """``EventFilter.rewrite`` for one continuation (whole events in, whole events out)."""

    __slots__ = (
        "aligning",
        "drop_role",
        "fmt",
        "head",
        "held_ids",
        "held_text",
        "plan",
        "tokens",
        "usage_event",
    )  # fmt: skip

    def __init__(self, fmt: Resume, plan: Continuation, delivered: Delivered) -> None:
        self.fmt = fmt
        self.plan = plan
        self.head = dict(delivered.head) if delivered.head else None  # None: the client has none
        self.drop_role = fmt.deltas and delivered.role_sent
        self.aligning = plan.anchor is not None  # ids: regenerated tokens still to pass
        self.held_text = ""  # the continuation's text while aligning
        self.held_ids: list[int] = []
        self.tokens = 0  # tokens of this continuation relayed to the client
        self.usage_event = b""  # the stream's final usage, rewritten (token accounting)

    @property
    def completion_tokens(self) -> int:
        """What the client was sent in all: before the break and from this continuation."""
        return self.plan.delivered + self.tokens

    def __call__(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in _EVENT_END.split(data):
            payload = b"".join(
                line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")
            )
            if payload == b"[DONE]":
                out.append(_DONE)
                continue
            try:
                obj = json.loads(payload) if payload else None
            except (ValueError, RecursionError):
                obj = None
            if isinstance(obj, dict) and (new := self._convert(obj)) is not None:
                out.append(_event(new))
        return b"".join(out)

    def _convert(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        if self.head is None:  # the client has no event yet: this stream's head is the one
            self.head = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        choices = list(obj.get("choices") or ())
        if self.aligning:
            choices = [a for c in choices if (a := self._align(c)) is not None]
            if not choices and not obj.get("usage"):
                return None
        if self.fmt.deltas and self.plan.via_completions:  # vLLM's chat chunk, its order
            new: dict[str, Any] = {**self.head, "object": self.fmt.chunk_object, "choices": []}
            for k, v in obj.items():
                if k not in ("id", "object", "created", "model", "choices"):
                    new[k] = v
            new["choices"] = [self._chat_choice(c) for c in choices]
            obj = new
        else:
            had_choices = bool(choices)
            obj.update(self.head)
            if "prompt_token_ids" in obj:
                obj["prompt_token_ids"] = None
            choices = [c for c in map(self._same_choice, choices) if c is not None]
            if had_choices and not choices:
                return None  # the repeated role event
            if "choices" in obj:
                obj["choices"] = choices
        if isinstance(obj.get("usage"), dict):
            obj["usage"] = self._final_usage(obj["usage"])
            self.usage_event = _event(obj)
        return obj

    def _align(self, c: dict[str, Any]) -> dict[str, Any] | None:
        """An ids continuation repeats the tokens after its start: hold its text until it has
        passed them and said as much as the client's anchor, then send what the client lacks,
        as one choice carrying the tokens beyond (see ``continuation.anchor``)."""
        plan = self.plan
        anchor = plan.anchor or ""
        self.held_text += c.get("text") or ""
        self.held_ids += c.get("token_ids") or []
        skip = plan.delivered - plan.start
        ended = c.get("finish_reason") is not None
        if not ended and (len(self.held_ids) < skip or len(self.held_text) < len(anchor)):
            return None
        self.aligning = False
        lag = next((n for n in range(min(MAX_LAG, len(anchor)) + 1)
                    if self.held_text.startswith(anchor[n:])), None)  # fmt: skip
        if lag is None or tuple(self.held_ids[:skip]) != plan.regenerated:
            log.warning("the continuation does not repeat the client's last %d tokens exactly: "
                        "the engine is not deterministic here", skip)  # fmt: skip
            lag = lag or 0
        text, ids = self.held_text[len(anchor) - lag :], self.held_ids[skip:]
        if not text and not ids and not ended:
            return None  # nothing new yet
        return {**c, "text": text, "token_ids": ids}

    def _count(self, choice: dict[str, Any], token_event: bool) -> None:
        ids = choice.get("token_ids")
        if isinstance(ids, list):
            self.tokens += len(ids)
        elif token_event:
            self.tokens += 1

    def _chat_choice(self, c: dict[str, Any]) -> dict[str, Any]:
        """A completions choice as vLLM's chat chunk writes it."""
        text = c.get("text")
        out: dict[str, Any] = {"index": 0, "delta": {"content": text} if text else {},
                               "logprobs": None, "finish_reason": c.get("finish_reason")}  # fmt: skip
        if out["finish_reason"] is not None:
            out["stop_reason"] = c.get("stop_reason")
        if "token_ids" in c:
            out["token_ids"] = c["token_ids"]
        self._count(c, True)
        return out

    def _same_choice(self, c: dict[str, Any]) -> dict[str, Any] | None:
        c = {**c, "index": 0}
        if "prompt_token_ids" in c:
            c["prompt_token_ids"] = None
        delta = c.get("delta")
        if isinstance(delta, dict) and "role" in delta:
            if self.drop_role:
                self.drop_role = False
                rest = {k: v for k, v in delta.items() if k != "role"}
                if not rest.get("content") and len(rest) <= 1 and "token_ids" not in c:
                    return None
                c["delta"] = rest
            self._count(c, bool(delta.get("content")) or "token_ids" in c)
            return c
        self._count(c, True)
        return c

    def _final_usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        """Prompt once (the original's: known exactly, else the continuation's less what it
        re-read of the answer), completion = what the client was sent."""
        prompt = self.plan.prompt_tokens
        if prompt is None:
            got = usage.get("prompt_tokens")
            prompt = max(0, int(got) - self.plan.start) if isinstance(got, int) else 0
        completion = self.plan.start + int(usage.get("completion_tokens") or 0)
        out = _usage(prompt, completion)
        for k, v in usage.items():
            if k not in out and k != "prompt_tokens_details":  # cached counts: the new prompt's
                out[k] = v
        return out


def ending(fmt: Resume, delivered: Delivered, plan: Finished) -> bytes:
    """The end of a stream whose generation had ended: a finish event when none was sent (the
    budget was spent), the usage, ``[DONE]``."""
    head = dict(delivered.head or {})
    out = b""
    if plan.finish_reason is None:
        if fmt.deltas:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None,
                                      "finish_reason": "length", "stop_reason": None}  # fmt: skip
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": "length",
                      "stop_reason": None}  # fmt: skip
        out += _event({**head, "choices": [choice]})
    if plan.prompt_tokens is not None:
        out += _event({**head, "choices": [], "usage": _usage(plan.prompt_tokens, plan.delivered)})
    return out + _DONE
