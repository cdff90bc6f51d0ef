"""Picker: prefix affinity with bounded load.

Requests that share their leading content (a system prompt, a few-shot preamble, a document
asked many questions) should land where that prefix's KV cache is already warm: vLLM's prefix
cache then skips their prefill. Two ways to get there were weighed:

- consistent hashing of the leading content (every gateway agrees without talking), but a hash
  spreads *distinct* prefixes only as evenly as chance allows (with two replicas and a few
  hundred prefixes, 45/55 splits are common), and it sends a prefix nobody has seen to a
  replica picked by its hash even when another one is idle;
- remembering where each prefix was sent (vllm-router's ``cache_aware`` policy keeps a radix
  tree per worker for the same reason): a prefix seen before goes back to its replica, a new
  one goes to the least-loaded replica. Distinct prefixes then spread as evenly as least-loaded
  does, shared ones stick. Chosen.

The memory is a bounded LRU table from the key (``routing_key``: the first ``PREFIX_CHARS``
characters of the prompt's text) to the replica's name, per gateway process. Alone, two gateway
pods or workers would each place a prefix by their own loads and warm it on two replicas; with
shared state (``gateway.state.prefixes``) each new placement is offered to the fleet
(``placed``), the first one stands, and every gateway learns it (``learn``) at its next exchange
with the store: one prefix, one replica, whichever gateway takes the request.

Bounded load (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads",
2016): the remembered replica takes the request only while its load after it stays within
``LOAD_FACTOR`` x the mean load, plus ``SLACK`` requests; otherwise the least-loaded replica takes
it and the prefix stays remembered where it was (its cache is still there when the burst is
over). The slack is for the ramp-up: with every load near 0, 1.25 x the mean is below one
request and the first burst of a prefix would be scattered over every replica. Measured
(``python -m bench replicas --replicas 4 --concurrency 64 --workloads shared
--routers gateway:prefix --requests-per-stream 6``: 8 system prompts drawn at random, half
load): share of a prefix's requests on its top replica 0.85 mean / 0.67 worst without slack,
0.93 / 0.81 with 2, 0.94 / 0.79 with 4; throughput and TTFT unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.apis import APIS
from gateway.routing.base import C, Request
from gateway.routing.least_loaded import LeastLoaded

LOAD_FACTOR = 1.25
SLACK = 2.0  # requests above the factor's bound (see above)
PREFIX_CHARS = 512
TABLE_SIZE = 65536  # remembered prefixes (16 bytes of key + a name each: ~10 MB at most)


class PrefixAffinity:
    def __init__(
        self, load_factor: float = LOAD_FACTOR, slack: float = SLACK, table_size: int = TABLE_SIZE
    ) -> None:
        self.load_factor = load_factor
        self.slack = slack
        self.table_size = table_size
        self.table: OrderedDict[bytes, str] = OrderedDict()
        self.fallback = LeastLoaded()
        # a new placement (digest, replica, the replica it replaces), told to the fleet
        self.placed: Callable[[bytes, str, str | None], None] | None = None

    def learn(self, digest: bytes, name: str) -> None:
        """The fleet's placement of a prefix (``gateway.state.prefixes``): it replaces ours."""
        self.table[digest] = name
        self.table.move_to_end(digest)
        if len(self.table) > self.table_size:
            self.table.popitem(last=False)

    def pick(self, request: Request, candidates: Sequence[C]) -> C:
        key = affinity_key(request)
        if len(candidates) == 1 or not key:
            return self.fallback.pick(request, candidates)
        digest = hashlib.blake2b(key, digest_size=16).digest()
        name = self.table.get(digest)
        if name is not None:
            for c in candidates:
                if c.name == name:
                    total = sum(x.load for x in candidates) + 1
                    if c.load + 1 <= self.load_factor * total / len(candidates) + self.slack:
                        self.table.move_to_end(digest)
                        return c
                    # over its bound: spill, and keep it remembered
                    return self.fallback.pick(request, candidates)
        chosen = self.fallback.pick(request, candidates)
        self.table[digest] = chosen.name
        if len(self.table) > self.table_size:
            self.table.popitem(last=False)
        if self.placed is not None:
            self.placed(digest, chosen.name, name)
        return chosen


def affinity_key(request: Request) -> bytes:
    """The request's affinity key: given, or ``routing_key`` of its body (kept for a retry)."""
    if request.key is None:
        request.key = routing_key(request.kind, request.body)
    return request.key


def routing_key(kind: str, body: Mapping[str, Any]) -> bytes:
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

    for value in APIS[kind].leading(body):  # what leads the prompt, as that API lays it out
        if add(value):
            break
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
