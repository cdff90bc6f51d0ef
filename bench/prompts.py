"""Prompts of an exact token count, built with the server's own tokenizer (``/tokenize``).

How: find common words that the server's tokenizer turns into exactly one token when preceded
by a space (" the", " river" ...). Both byte-level BPE and SentencePiece tokenizers start a
new token at a space, so a prompt made of ``k`` such words has ``k`` tokens plus a constant
overhead (BOS for completions; the chat template's tokens for chat), which we measure once.
Every prompt we build for a cell is checked against ``/tokenize`` on a sample (all of them for
small cells), and a prompt that misses is repaired word by word; the server's
``usage.prompt_tokens`` is what finally goes into the metrics.

Why random words per request: a shared prefix would let the prefix cache skip prefill and
flatter TTFT. Requests draw independent random word sequences (deterministic from a seed)
unless ``shared_prefix`` asks for a common leading fraction.

Prompts are generated lazily from (seed, index), so a 2,048-stream x 16k-token cell does not
hold gigabytes of text, and a ``PromptSet`` pickles cheaply into client worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import httpx
import numpy as np

Api = Literal["chat", "completions"]

# Common English words: single tokens in every large tokenizer we know of. The server decides;
# words it splits are dropped at calibration.
CANDIDATE_WORDS = """
the of and to in is was for on that with as by at from his her are were had have has be been
this which or an not but all they their there one two three four five six seven eight nine ten
new first last time year day man world life hand part child eye woman place work week case point
number group problem fact water room mother area money story month lot right study book word
side kind head house service friend father power hour game line end member law car city name
team minute idea body back parent face level office door health person art war history party
result change morning reason research girl guy moment air teacher force education food river
tree stone light music table paper market letter field class road state song voice dog cat horse
bird fish apple bread milk green blue red black white small large long short old young good
great high little big early late open close simple clear free full hard easy real sure run walk
talk read write sing play make take give find tell ask work feel try leave call keep let begin
seem help show hear turn start move live believe bring happen stand lose pay meet include
continue set learn lead understand watch follow stop create speak allow add spend grow offer
remember love consider appear buy wait serve die send expect build stay fall cut reach kill
remain suggest raise pass sell require report decide pull north south east west summer winter
spring autumn garden window street village island mountain ocean forest valley desert
""".split()  # noqa: SIM905 (a word list reads better as prose)


@dataclass(frozen=True)
class Calibration:
    """What we learnt from the server's tokenizer: usable words and the constant overhead."""

    api: Api
    words: tuple[str, ...]
    overhead: int  # tokens a prompt of k words has beyond k (BOS, chat template)

    @property
    def min_tokens(self) -> int:
        """Shortest prompt we can build: one word plus the overhead."""
        return self.overhead + 1


class Tokenizer:
    """The server's ``/tokenize`` endpoint (engine or gateway), synchronously."""

    def __init__(self, client: httpx.Client, base_url: str, model: str, api: Api) -> None:
        self.client = client
        self.url = base_url.rstrip("/") + "/tokenize"
        self.model = model
        self.api = api

    def count(self, text: str, api: Api | None = None) -> int:
        """Tokens the server will count for this text as a prompt of the given API."""
        api = api or self.api
        body: dict = {"model": self.model}
        if api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
            body["add_generation_prompt"] = True
        else:
            body["prompt"] = text
        resp = self.client.post(self.url, json=body)
        resp.raise_for_status()
        return int(resp.json()["count"])

    def count_raw(self, text: str) -> int:
        """Tokens of the bare text (no BOS, no template)."""
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        resp = self.client.post(self.url, json=body)
        resp.raise_for_status()
        return int(resp.json()["count"])


def calibrate(tok: Tokenizer, min_words: int = 16) -> Calibration:
    """Find single-token words and the prompt overhead for ``tok.api``."""
    words = tuple(w for w in dict.fromkeys(CANDIDATE_WORDS) if tok.count_raw(" " + w) == 1)
    if len(words) < min_words:
        raise RuntimeError(
            f"only {len(words)} single-token words found with this tokenizer; "
            "cannot build exact-length prompts"
        )
    probe = words[: min(len(words), 40)]
    text = "".join(" " + w for w in probe)
    if tok.count_raw(text) != len(probe):
        raise RuntimeError("tokenizer merges across spaces; exact-length prompts unsupported")
    overhead = tok.count(text) - len(probe)
    return Calibration(api=tok.api, words=words, overhead=overhead)


@dataclass
class PromptSet:
    """Lazily generated prompts of ``tokens`` tokens each for one cell.

    ``shared_prefix``: fraction (0-1) of each prompt's words that is the same for every prompt
    of the set (to measure prefix caching on purpose); 0 keeps prompts independent.
    ``adjust``: per-index word-count corrections found by verification (normally empty).
    """

    calibration: Calibration
    tokens: int
    seed: int = 0
    shared_prefix: float = 0.0
    adjust: dict[int, int] = field(default_factory=dict)

    @property
    def base_words(self) -> int:
        return self.tokens - self.calibration.overhead

    def text(self, index: int) -> str:
        """The prompt text (chat: the user message content) for request ``index``."""
        words = self.calibration.words
        n = self.base_words + self.adjust.get(index, 0)
        n_shared = int(n * self.shared_prefix)
        parts: list[str] = []
        if n_shared:
            rng = np.random.default_rng([self.seed, self.tokens, 0xC0FFEE])
            parts.extend(words[i] for i in rng.integers(len(words), size=n_shared))
        rng = np.random.default_rng([self.seed, self.tokens, index + 1])
        parts.extend(words[i] for i in rng.integers(len(words), size=n - n_shared))
        return " " + " ".join(parts)

    def verify(self, tok: Tokenizer, indices: list[int], max_repairs: int = 4) -> int:
        """Check prompts against the server, repairing misses; returns how many missed."""
        missed = 0
        for i in indices:
            for _ in range(max_repairs):
                got = tok.count(self.text(i))
                if got == self.tokens:
                    break
                missed += 1
                self.adjust[i] = self.adjust.get(i, 0) + (self.tokens - got)
            else:
                raise RuntimeError(f"prompt {i} cannot be made exactly {self.tokens} tokens")
        return missed


def sample_indices(n: int, sample: int = 8) -> list[int]:
    """All indices for small cells, else an even spread of ``sample`` of them."""
    if n <= sample:
        return list(range(n))
    return sorted({round(k * (n - 1) / (sample - 1)) for k in range(sample)})


def prepare(
    tok: Tokenizer,
    calibration: Calibration,
    tokens: int,
    count: int,
    seed: int = 0,
    shared_prefix: float = 0.0,
    sample: int = 8,
) -> PromptSet:
    """A verified prompt set; if any sampled prompt missed, every prompt is verified."""
    prompts = PromptSet(calibration, tokens, seed=seed, shared_prefix=shared_prefix)
    if prompts.verify(tok, sample_indices(count, sample)) and count > sample:
        prompts.verify(tok, list(range(count)))
    return prompts
