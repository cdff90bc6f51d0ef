"""Pure maths from recorded timings to a cell's metrics, defined exactly as ``vllm bench serve``.

Definitions (checked against vllm/benchmarks/serve.py::calculate_metrics):

- t0: just before the POST, after any client-side wait for a concurrency slot.
- TTFT: first chunk carrying ``choices`` - t0.
- E2EL: last chunk carrying ``choices`` - t0 (the usage chunk and ``[DONE]`` excluded).
- n: ``usage.completion_tokens``; without a usage chunk, the number of ``choices`` chunks
  (vLLM re-tokenizes the text instead; we count that case in ``usage_missing``).
- TPOT: (E2EL - TTFT) / (n - 1), for requests with n > 1 only.
- ITL: every gap between consecutive ``choices`` chunks, pooled over the cell's requests.
- Duration: first send to last finish, failures included.
- Request throughput: completed / duration. Output tok/s: sum(n) / duration.
  Total tok/s: (sum prompt tokens + sum n) / duration, over completed requests.
- Goodput: completed requests meeting every SLO / duration; as in vLLM a request with n <= 1
  counts with TPOT 0 for this test.
- Percentiles: ``numpy.percentile`` (linear interpolation), over successful requests.

Beyond vLLM: errors and timeouts counted apart, client-side queue time, max ITL, SLO
attainment (good / all requests, failures are not good), and the concurrency the client
actually sustained (to tell when the client, not the server, was the bottleneck).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from bench.records import RequestRecord

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el")


@dataclass(frozen=True, slots=True)
class Slo:
    """Per-request service-level objectives in milliseconds; None disables one."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def met_by(self, ttft: float, tpot: float, e2el: float) -> bool:
        """vLLM's test: every configured SLO >= the request's value (seconds in)."""
        checks = ((self.ttft_ms, ttft), (self.tpot_ms, tpot), (self.e2el_ms, e2el))
        return all(slo is None or slo / 1000.0 >= value for slo, value in checks)


def stats_ms(values: Sequence[float] | np.ndarray, name: str, with_max: bool = False) -> dict:
    """mean/p50/p90/p99 (and max) of values in seconds, as ``<name>_ms_<stat>`` keys in ms.

    Empty input gives None rather than vLLM's 0, so that "no data" cannot pass for "instant".
    """
    arr = np.asarray(values, dtype=float)
    out: dict[str, float | None] = {}
    if arr.size == 0:
        out[f"{name}_ms_mean"] = None
        for p in PERCENTILES:
            out[f"{name}_ms_p{p}"] = None
        if with_max:
            out[f"{name}_ms_max"] = None
        return out
    out[f"{name}_ms_mean"] = float(np.mean(arr)) * 1000.0
    for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES), strict=True):
        out[f"{name}_ms_p{p}"] = float(v) * 1000.0
    if with_max:
        out[f"{name}_ms_max"] = float(np.max(arr)) * 1000.0
    return out


def duration(records: Iterable[RequestRecord]) -> float:
    """First send to last finish, failures included."""
    recs = list(records)
    if not recs:
        return 0.0
    return max(r.finish for r in recs) - min(r.start for r in recs)


def output_tokens(record: RequestRecord) -> int:
    """n: usage.completion_tokens, else the number of ``choices`` chunks."""
    if record.usage_seen:
        return record.output_tokens
    if record.first_token is None:
        return 0
    return len(record.itl) + 1


def tpot(record: RequestRecord) -> float | None:
    """(E2EL - TTFT) / (n - 1) for n > 1, else None."""
    n = output_tokens(record)
    ttft, e2el = record.ttft, record.e2el
    if n <= 1 or ttft is None or e2el is None:
        return None
    return (e2el - ttft) / (n - 1)


def concurrency_profile(records: Sequence[RequestRecord]) -> tuple[float, int]:
    """(time-weighted mean in-flight requests over the steady window, peak in-flight).

    The steady window runs from the first send to the last send: while requests are still
    waiting for a slot, a client that keeps up has exactly ``concurrency`` requests in flight,
    so a lower mean says the client (or its event loop) was the bottleneck. With no queue (all
    requests sent at once) the window is empty and the peak is returned for both.
    """
    if not records:
        return 0.0, 0
    events = sorted([(r.start, 1) for r in records] + [(r.finish, -1) for r in records])
    peak = level = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    lo = min(r.start for r in records)
    hi = max(r.start for r in records)
    if hi - lo <= 0:
        return float(peak), peak
    area = 0.0
    level = 0
    prev = lo
    for t, delta in events:  # integrate the in-flight level over [lo, hi]
        clamped = min(max(t, lo), hi)
        area += level * (clamped - prev)
        prev = clamped
        level += delta
    return area / (hi - lo), peak


def summarize(records: Sequence[RequestRecord], slo: Slo | None = None) -> dict:
    """Every metric of one cell as a flat dict (the CSV/JSON row minus the cell's identity)."""
    slo = slo or Slo()
    ok = [r for r in records if r.ok]
    dur = duration(records)
    ns = [output_tokens(r) for r in ok]
    prompts = [r.prompt_tokens for r in ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    e2els = [r.e2el for r in ok if r.e2el is not None]
    tpots = [t for t in (tpot(r) for r in ok) if t is not None]
    itls = np.concatenate([np.frombuffer(r.itl, dtype=float) for r in ok]) if ok else []
    good = sum(1 for r in ok if slo.met_by(r.ttft or 0.0, tpot(r) or 0.0, r.e2el or 0.0))
    errors = sum(1 for r in records if r.outcome == "error")
    timeouts = sum(1 for r in records if r.outcome == "timeout")
    observed, peak = concurrency_profile(records)
    per_s = (lambda x: x / dur) if dur > 0 else (lambda x: 0.0)
    row: dict = {
        "requests": len(records),
        "completed": len(ok),
        "errors": errors,
        "timeouts": timeouts,
        "error_rate": (errors + timeouts) / len(records) if records else 0.0,
        "duration_s": dur,
        "input_tokens": int(sum(prompts)),
        "output_tokens": int(sum(ns)),
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(sum(ns)),
        "total_throughput": per_s(sum(prompts) + sum(ns)),
        "goodput": per_s(good),
        "slo_attainment": good / len(records) if records else 0.0,
        "usage_missing": sum(1 for r in ok if not r.usage_seen),
    }
    row |= stats_ms(ttfts, "ttft")
    row |= stats_ms(tpots, "tpot")
    row |= stats_ms(itls, "itl", with_max=True)
    row |= stats_ms(e2els, "e2el")
    row |= stats_ms([r.queue_time for r in ok], "queue")
    row["observed_concurrency"] = observed
    row["peak_concurrency"] = peak
    return row
