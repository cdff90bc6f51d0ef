"""Picker (scorer): the replica that really holds the longest prefix of the prompt, load allowing.

``prefix`` guesses where a prompt's KV blocks are (it remembers where it sent the prompt's
leading text); this asks the engines' own account of their caches (``gateway/kvindex``: vLLM's
KV-cache events, per replica). For each candidate the index says how many leading tokens of the
prompt it would serve from cache; the score is that fraction of the prompt minus the replica's
load as a fraction of its cap::

    score = cached_tokens / prompt_tokens - LOAD_WEIGHT x load / cap

and the highest score wins (ties: the least loaded). A replica whose cache is the only reason to
pick it does not get a burst beyond its share: as in ``prefix``, a candidate whose load after
this request would pass ``LOAD_FACTOR`` x the mean + ``SLACK`` is scored on load alone. Full and
saturated replicas were already set aside by the ``HasRoom`` filter (unless all of them are).

It needs the prompt's token ids (``wants_tokens``: the service asks the engine's ``/tokenize``
for them, the same rendering the engine serves) and falls back to ``prefix`` when they are not
known (a request ``/tokenize`` cannot render faithfully, a failed call), when no replica's view
is live (events off, a platform that does not publish them, all publishers gone) and when no
replica holds any of the prompt (a new prefix: ``prefix`` sends it to the least loaded and
keeps its burst together until the engine has stored the blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.routing.base import C, Request
from gateway.routing.prefix import LOAD_FACTOR, SLACK, PrefixAffinity

LOAD_WEIGHT = 0.5


class CacheView(Protocol):
    """What this scorer reads of the index (``gateway.kvindex.KVIndex``)."""

    def cached(self, tokens: Sequence[int], names: Sequence[str]) -> dict[str, int] | None: ...


class KVCacheAware:
    wants_tokens = True

    def __init__(
        self,
        index: CacheView,
        load_weight: float = LOAD_WEIGHT,
        load_factor: float = LOAD_FACTOR,
        slack: float = SLACK,
    ) -> None:
        self.index = index
        self.load_weight = load_weight
        self.load_factor = load_factor
        self.slack = slack
        self.fallback = PrefixAffinity(load_factor, slack)
        self.decisions = {"kv": 0, "fallback": 0}  # how each pick was made (tests, bench)

    def pick(self, request: Request, candidates: Sequence[C]) -> C:
        tokens = request.tokens
        cached = None
        if tokens and len(candidates) > 1:
            cached = self.index.cached(tokens, [c.name for c in candidates])
        if not cached or max(cached.values()) == 0:
            self.decisions["fallback"] += 1
            return self.fallback.pick(request, candidates)
        self.decisions["kv"] += 1
        n = len(tokens or ()) or 1
        bound = self.load_factor * (sum(c.load for c in candidates) + 1) / len(candidates)
        bound += self.slack

        def score(c: C) -> tuple[float, float]:
            hit = cached.get(c.name, 0) / n if c.load + 1 <= bound else 0.0
            return hit - self.load_weight * c.load / max(1, c.cap), -c.load

        return max(candidates, key=score)
