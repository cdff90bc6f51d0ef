"""Prompts of an exact token count, built with the engine's own tokenizer.

A bucket step is only worth something if it lands in the bucket it claims: a prompt of "about
1000 words" can fall either side of a padding boundary. So the text is cut from token ids and
checked with the engine's ``POST /tokenize`` (special tokens included, exactly as
``/v1/completions`` counts them), and adjusted until the count is exact.

Each *variant* starts with different words, so no step reuses another step's (or its own first
hit's) KV blocks through prefix caching: a cache hit would shorten the prefill and time a
different, cheaper shape. The runner passes a per-run ``salt`` so that a second warm-up of the
same engine is not served from the cache either.
"""

from __future__ import annotations

import random

import httpx

# Plain ASCII words: byte-level tokenizers never split them into partial UTF-8 sequences, so a
# detokenized slice always re-tokenizes cleanly.
WORDS = [
    "river",
    "stone",
    "morning",
    "garden",
    "window",
    "paper",
    "silver",
    "quiet",
    "orange",
    "market",
    "winter",
    "bridge",
    "engine",
    "letter",
    "forest",
    "yellow",
    "harbor",
    "candle",
    "island",
    "mirror",
    "planet",
    "thunder",
    "velvet",
    "violin",
    "meadow",
    "lantern",
    "copper",
    "basket",
    "anchor",
    "circle",
    "falcon",
    "granite",
    "hollow",
    "jacket",
    "kettle",
    "ladder",
    "marble",
    "needle",
    "oyster",
    "pepper",
    "quartz",
    "ribbon",
    "saddle",
    "timber",
    "umbrella",
    "valley",
    "walnut",
    "yarn",
    "zephyr",
]


class PromptError(RuntimeError):
    """The tokenizer would not give an exact count (should not happen with ASCII filler)."""


def filler(n_words: int, variant: int, salt: int = 0) -> str:
    """Deterministic word soup; each (salt, variant) differs from its first words on."""
    rng = random.Random(f"{salt}:{variant}")
    return " ".join(rng.choices(WORDS, k=n_words))


class PromptBuilder:
    """Builds and caches exact-length prompts through one engine's tokenizer."""

    def __init__(
        self, client: httpx.AsyncClient, model: str, timeout_s: float = 60, salt: int = 0
    ) -> None:
        self._client = client
        self._salt = salt
        self._model = model
        self._timeout = timeout_s
        self._pools: dict[int, list[int]] = {}
        self._cache: dict[tuple[int, int], str] = {}

    async def tokenize(self, text: str, special: bool = True) -> list[int]:
        body = {"model": self._model, "prompt": text, "add_special_tokens": special}
        resp = await self._client.post("/tokenize", json=body, timeout=self._timeout)
        resp.raise_for_status()
        return list(resp.json()["tokens"])

    async def detokenize(self, ids: list[int]) -> str:
        body = {"model": self._model, "tokens": ids}
        resp = await self._client.post("/detokenize", json=body, timeout=self._timeout)
        resp.raise_for_status()
        return str(resp.json()["prompt"])

    async def _pool(self, n: int, variant: int) -> list[int]:
        """At least ``n`` token ids of filler (no special tokens) for this variant."""
        pool = self._pools.get(variant, [])
        words = max(len(pool), n) + 16
        while len(pool) < n:
            pool = await self.tokenize(filler(words, variant, self._salt), special=False)
            words *= 2
        self._pools[variant] = pool
        return pool

    async def exact(self, n: int, variant: int = 0) -> str:
        """A text prompt that the engine counts as exactly ``n`` tokens (BOS included)."""
        key = (n, variant)
        if key in self._cache:
            return self._cache[key]
        pool = await self._pool(n + 8, variant)
        specials = len(await self.tokenize("", special=True))
        take = max(1, n - specials)
        seen: set[int] = set()
        for _ in range(12):
            text = await self.detokenize(pool[:take])
            count = len(await self.tokenize(text, special=True))
            if count == n:
                self._cache[key] = text
                return text
            seen.add(take)
            nxt = min(len(pool), max(1, take + (n - count)))
            if nxt in seen:  # oscillating around a merge: nudge by one
                nxt = min(len(pool), max(1, take + (1 if count < n else -1)))
            take = nxt
        raise PromptError(f"could not build a prompt of exactly {n} tokens (last count {count})")
