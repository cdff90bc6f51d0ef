"""What the client records about one request: raw timestamps, nothing derived.

Kept apart from the client so that the metric maths (``bench.metrics``) can be tested on
hand-written records, and so that records can cross process boundaries (the multi-process
client pickles them) and be saved and recomputed later.

All times are ``time.perf_counter()`` values. On Linux that is CLOCK_MONOTONIC, one clock for
every process on the machine, so records from several client processes (and the synthetic
upstream's emission stamps) can be compared directly.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["ok", "error", "timeout"]


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it.

    ``arrival``: when the request became due (all of a cell's requests are due at its start, as
    with ``vllm bench serve --request-rate inf``); ``start - arrival`` is the client-side queue
    time spent waiting for a concurrency slot. ``start`` is t0, taken just before the POST.
    ``first_token``/``last_token``: the first and last SSE chunks carrying ``choices``.
    ``itl``: every gap between consecutive ``choices`` chunks (seconds), in order.
    ``finish``: when the request was over for the client (``[DONE]``, close, error or timeout);
    the cell's duration runs from the first ``start`` to the last ``finish``.
    """

    arrival: float
    start: float
    finish: float = 0.0
    first_token: float | None = None
    last_token: float | None = None
    itl: array = field(default_factory=lambda: array("d"))
    prompt_tokens: int = 0
    output_tokens: int = 0
    usage_seen: bool = False
    outcome: Outcome = "error"
    status: int | None = None
    error: str = ""
    # Optional: per-chunk delivery lag (receive time - the upstream's emission stamp), seconds.
    # Only the synthetic upstream stamps its chunks; used by the gateway-overhead benchmark.
    chunk_lag: array = field(default_factory=lambda: array("d"))

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def ttft(self) -> float | None:
        """Time to first token: first ``choices`` chunk - t0."""
        return None if self.first_token is None else self.first_token - self.start

    @property
    def e2el(self) -> float | None:
        """End-to-end latency: last ``choices`` chunk - t0 (usage chunk and [DONE] excluded)."""
        return None if self.last_token is None else self.last_token - self.start

    @property
    def queue_time(self) -> float:
        """Client-side wait for a concurrency slot, reported apart from TTFT."""
        return self.start - self.arrival
