"""Who used the accelerator: one replica's busy time split between the requests that ran on it.

Pure (no I/O, no clock: sample times come in as arguments), so the model is tested exactly.

The model, per replica:

- **Busy time** comes from the engine itself: ``vllm:num_requests_running`` as the monitor
  samples it (every ``GATEWAY_METRICS_POLL_S``). Between two samples the engine counts as busy
  for the gap times the share of its two ends that had a request running (trapezoid rule: a gap
  busy at both ends is all busy, at one end half). Error: at most half a poll interval at each
  start or end of a busy period, unbiased on average.
- **Work** of a finished request: its prefill tokens the engine computed (prompt tokens minus
  the cached ones: a prefix-cache hit is credited) and its decode tokens, each weighted by what
  a token of that phase costs *this* engine, measured from its own histograms since the ledger
  first saw it (a long window: the ratio of one short period swings with the load): ``vllm:request_prefill_time_seconds_sum`` / ``vllm:request_prefill_kv_computed_tokens_sum``
  and ``vllm:request_decode_time_seconds_sum`` / ``vllm:generation_tokens_total`` (deltas). Those
  per-request times overlap under batching, so only their ratio is used, never their sum.
- **Split**: at each settlement the busy time accrued since the last one goes to the requests
  that finished since then, in proportion to their weighted work, each request's share further
  split into its prefill and decode parts. Busy time with no finished request yet (a long
  generation still running) is carried to the next settlement: every busy second is charged to
  somebody, so the keys' sum equals the measured busy time over any window that starts and ends
  idle.

What it cannot see: a request's busy time is charged when it finishes, so a window that cuts
through long requests shifts charge between adjacent windows (not between keys); a request
that runs alongside others is charged by its work, not by its wall time (batching makes
concurrent decode cheaper per token, and every request in the batch gets that discount alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PHASES = ("prefill", "decode")
MAX_PENDING = 10_000
COSTLESS_WAIT_S = 60.0  # longest a settlement waits for the engine's phase costs


@dataclass(frozen=True)
class EngineCounters:
    """The engine's cumulative counters at one sample (sums over its data-parallel ranks)."""

    at: float  # monotonic seconds
    running: float
    prefill_s: float = 0.0
    prefill_tokens: float = 0.0
    decode_s: float = 0.0
    decode_tokens: float = 0.0


@dataclass(frozen=True)
class Work:
    key: str
    prefill_tokens: int  # prompt tokens the engine computed (cached ones excluded)
    decode_tokens: int


@dataclass
class ReplicaLedger:
    """One replica's busy time, pending work, and the per-token phase costs."""

    last: EngineCounters | None = None
    pending_s: float = 0.0  # busy seconds not charged yet
    busy_total_s: float = 0.0
    work: list[Work] = field(default_factory=list)
    # engine counters when first seen (or after a restart): the phase costs' baseline
    base: EngineCounters | None = None

    def observe(self, s: EngineCounters) -> float:
        """A new engine sample; returns the busy seconds it added."""
        prev, self.last = self.last, s
        if self.base is None or s.prefill_tokens < self.base.prefill_tokens:
            self.base = s  # first sample, or an engine restart reset its counters
        if prev is None or s.at <= prev.at:
            return 0.0
        busy = (s.at - prev.at) * ((prev.running > 0) + (s.running > 0)) / 2
        self.pending_s += busy
        self.busy_total_s += busy
        return busy

    def finished(self, work: Work) -> None:
        self.work.append(work)
        if len(self.work) > MAX_PENDING:  # an engine never seen busy: keep the newest
            del self.work[: len(self.work) - MAX_PENDING]

    def phase_costs(self) -> tuple[float, float]:
        """Seconds per prefill token and per decode token, from the engine's histograms since
        the baseline; (1, 1) (tokens count alike) while a phase has no data yet."""
        if self.base is None or self.last is None:
            return 1.0, 1.0
        d = self.last
        b = self.base
        pt, dt = d.prefill_tokens - b.prefill_tokens, d.decode_tokens - b.decode_tokens
        ps, ds = d.prefill_s - b.prefill_s, d.decode_s - b.decode_s
        if pt <= 0 or dt <= 0 or ps <= 0 or ds <= 0:
            return 1.0, 1.0
        return ps / pt, ds / dt

    def due(self, now: float, every_s: float, last_settled: float) -> bool:
        """Settle when the engine is idle (every busy second so far belongs to finished work)
        or, under continuous load, every ``every_s``; not before both phases have a measured
        cost (weighing a prefill token like a decode one would overcharge long prompts), unless
        that takes longer than ``COSTLESS_WAIT_S``."""
        if not self.work:
            return False
        if not self.has_costs() and now - last_settled < COSTLESS_WAIT_S:
            return False
        idle = self.last is not None and self.last.running == 0
        return idle or now - last_settled >= every_s

    def has_costs(self) -> bool:
        return self.phase_costs() != (1.0, 1.0)

    def settle(self) -> dict[tuple[str, str], float]:
        """Charge the pending busy time to the finished work: seconds by (key, phase)."""
        p, d = self.phase_costs()
        weights = [(w, w.prefill_tokens * p, w.decode_tokens * d) for w in self.work]
        total = sum(a + b for _, a, b in weights)
        if total <= 0 or self.pending_s <= 0:
            if self.last is not None and self.last.running == 0:
                self.work.clear()  # idle and nothing measured: it ran between two samples
            return {}
        out: dict[tuple[str, str], float] = {}
        per = self.pending_s / total
        for w, a, b in weights:
            for phase, x in (("prefill", a), ("decode", b)):
                if x > 0:
                    out[w.key, phase] = out.get((w.key, phase), 0.0) + x * per
        self.work.clear()
        self.pending_s = 0.0
        return out
