"""Picker: prefix affinity with bounded load ("consistent hashing with bounded loads").

Requests that share their leading content (a system prompt, a few-shot preamble, a document
asked many questions) should land where that prefix's KV cache is already warm: vLLM's prefix
cache then skips their prefill. Consistent hashing of the leading content gives that affinity,
and keeps it stable when a replica joins or leaves (only ~1/N of the keys move). Plain hashing
would pile a popular prefix onto one replica, so the load is bounded as in Mirrokni, Thorup and
Zadimoghaddam, "Consistent Hashing with Bounded Loads" (2016): walking the ring from the key,
the first replica whose load after this request stays within ``LOAD_FACTOR`` x the mean (plus
one request) takes it. With 1.25, no replica carries more than 25% above the average while any
replica has room, and an idle stack keeps perfect affinity.

The key is the first ``PREFIX_CHARS`` characters of the prompt's text in order (system prompt,
then messages; a completion's prompt; a response's instructions and input), so two requests
whose first ~500 characters agree share a replica even if what follows differs.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from gateway.routing.base import C

LOAD_FACTOR = 1.25
VNODES = 64  # points per replica on the ring: spreads keys evenly over few replicas
PREFIX_CHARS = 512


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class PrefixAffinity:
    def __init__(self, load_factor: float = LOAD_FACTOR) -> None:
        self.load_factor = load_factor
        self._rings: dict[tuple[str, ...], tuple[list[int], list[str]]] = {}

    def _ring(self, names: tuple[str, ...]) -> tuple[list[int], list[str]]:
        ring = self._rings.get(names)
        if ring is None:
            points = sorted(
                (_hash(f"{name}#{i}".encode()), name) for name in names for i in range(VNODES)
            )
            ring = ([p for p, _ in points], [n for _, n in points])
            if len(self._rings) > 64:  # replica sets change rarely; never grow without bound
                self._rings.clear()
            self._rings[names] = ring
        return ring

    def order(self, key: bytes, names: tuple[str, ...]) -> list[str]:
        """The replicas in ring order from ``key``'s point (each once): its preference list."""
        points, owners = self._ring(names)
        start = bisect.bisect(points, _hash(key)) % len(points)
        seen: list[str] = []
        for i in range(len(points)):
            name = owners[(start + i) % len(points)]
            if name not in seen:
                seen.append(name)
                if len(seen) == len(names):
                    break
        return seen

    def pick(self, key: bytes, candidates: Sequence[C]) -> C:
        if len(candidates) == 1:
            return candidates[0]
        by_name = {c.name: c for c in candidates}
        bound = self.load_factor * (sum(c.load for c in candidates) + 1) / len(candidates)
        order = self.order(key, tuple(sorted(by_name)))
        for name in order:
            c = by_name[name]
            if c.load + 1 <= max(1.0, bound):
                return c
        return min(candidates, key=lambda c: (c.load, c.name))


def routing_key(kind: str, body: dict[str, Any]) -> bytes:
    """The request's leading content (``PREFIX_CHARS`` characters), as the affinity key."""
    parts: list[str] = []
    budget = PREFIX_CHARS

    def add(value: object) -> bool:
        nonlocal budget
        text = value if isinstance(value, str) else _text(value)
        if text:
            parts.append(text[:budget])
            budget -= min(budget, len(text))
        return budget <= 0

    if kind == "chat":
        for m in body.get("messages") or ():
            if isinstance(m, dict) and add(m.get("content")):
                break
    elif kind == "messages":  # Anthropic: the system prompt is a top-level field
        if not add(body.get("system")):
            for m in body.get("messages") or ():
                if isinstance(m, dict) and add(m.get("content")):
                    break
    elif kind == "responses":
        if not add(body.get("instructions")):
            add(body.get("input"))
    else:  # completions: the (first) prompt
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch: its first prompt (a string, or token ids)
        add(prompt)
    return "\x00".join(parts).encode()


def _text(value: object) -> str:
    """Text of a content-parts list (the ``text`` fields), else compact JSON of the value."""
    if value is None:
        return ""
    if isinstance(value, list):
        texts = [p.get("text") for p in value if isinstance(p, dict)]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)  # type: ignore[arg-type]
    return json.dumps(value, separators=(",", ":"), sort_keys=True)[:PREFIX_CHARS]
