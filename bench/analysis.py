"""From measured rows to the decisions an operator makes: pure functions, no I/O.

Definitions (also in bench/README.md):
- SLO pass: the cell ran (status ok) and at least ``attainment`` of ALL its requests completed
  and met every SLO (failures are not good requests).
- Peak throughput: the ok cell with the highest output tok/s.
- Best interactive cell: among SLO-passing cells, the highest output tok/s: the most
  economical point that still meets the SLOs.
- Saturation knee (per context): the lowest concurrency c after which doubling (the next
  tested concurrency) gains less than ``knee_gain`` output throughput; beyond it, more
  concurrency mostly buys queueing (TTFT) rather than tokens.
- Cost per 1M tokens: the deployment's price per hour / 3600 / tok/s x 1e6, only with a price
  (the profile's ``PRICE_PER_HOUR_USD`` or ``--price-per-hour``; none: no cost figures).
- Compile stall: max ITL > ``stall_factor`` x p99 ITL and > ``stall_min_ms``: one pause far
  outside the cell's distribution (on TPU, an XLA compile on the request path).
- Client bound: the client sustained less than 95% of the target concurrency, or its event
  loop woke up more than ``LOOP_LAG_MS`` late at p99: latencies may be the client's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

CLIENT_BOUND_RATIO = 0.95
LOOP_LAG_MS = 20.0


@dataclass(frozen=True)
class Policy:
    """Thresholds for the report's judgements (CLI flags)."""

    attainment: float = 0.99
    knee_gain: float = 0.10
    stall_factor: float = 10.0
    stall_min_ms: float = 100.0
    price_per_hour: float | None = None  # USD per hour, whole deployment; None: no costs
    price_source: str = "none"  # where the price came from, for the report
    chips: int = 1


def cost_per_million(tok_s: float | None, policy: Policy) -> float | None:
    """USD per 1M tokens at the measured rate, or None without throughput."""
    if not tok_s or policy.price_per_hour is None:
        return None
    return policy.price_per_hour / 3600.0 / tok_s * 1e6


def derive(row: dict, policy: Policy) -> dict:
    """Add the judged columns (slo_pass, client_bound, compile_stall, costs) to a row."""
    ran = row.get("status") in ("ok", "failed", "interrupted") and row.get("requests")
    out = dict(row)
    out["slo_pass"] = bool(
        row.get("status") == "ok" and (row.get("slo_attainment") or 0.0) >= policy.attainment
    )
    bound = False
    if ran:
        queued = (row.get("requests") or 0) > row["concurrency"]
        observed = row.get("observed_concurrency") or 0.0
        bound = (queued and observed < CLIENT_BOUND_RATIO * row["concurrency"]) or (
            (row.get("loop_lag_ms_p99") or 0.0) > LOOP_LAG_MS
        )
    out["client_bound"] = bool(bound)
    itl_max, itl_p99 = row.get("itl_ms_max"), row.get("itl_ms_p99")
    out["compile_stall"] = bool(
        ran
        and itl_max is not None
        and itl_p99 is not None
        and itl_max > policy.stall_factor * itl_p99
        and itl_max > policy.stall_min_ms
    )
    out["cost_per_1m_output_usd"] = cost_per_million(row.get("output_throughput"), policy)
    out["cost_per_1m_total_usd"] = cost_per_million(row.get("total_throughput"), policy)
    return out


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("output_throughput")]


def peak(rows: list[dict]) -> dict | None:
    """The ok cell with the highest output throughput."""
    ok = _ok(rows)
    return max(ok, key=lambda r: r["output_throughput"]) if ok else None


def best_interactive(rows: list[dict]) -> dict | None:
    """The SLO-passing cell with the highest output throughput."""
    passing = [r for r in _ok(rows) if r.get("slo_pass")]
    return max(passing, key=lambda r: r["output_throughput"]) if passing else None


@dataclass(frozen=True)
class Knee:
    context: int
    concurrency: int | None  # None: not reached within the tested concurrencies
    throughput: float | None
    ttft_p50_ms: float | None
    next_concurrency: int | None
    next_throughput: float | None
    next_ttft_p50_ms: float | None
    max_tested: int


def knees(rows: list[dict], gain: float) -> list[Knee]:
    """The saturation knee of every context length with at least one ok cell."""
    out = []
    for ctx in sorted({r["context"] for r in _ok(rows)}):
        line = sorted((r for r in _ok(rows) if r["context"] == ctx), key=lambda r: r["concurrency"])
        knee = None
        for here, nxt in itertools.pairwise(line):
            if nxt["output_throughput"] < (1.0 + gain) * here["output_throughput"]:
                knee = (here, nxt)
                break
        if knee is None:
            last = line[-1]
            out.append(
                Knee(ctx, None, None, None, None, None, None, max_tested=last["concurrency"])
            )
            continue
        here, nxt = knee
        out.append(
            Knee(
                ctx,
                here["concurrency"],
                here["output_throughput"],
                here.get("ttft_ms_p50"),
                nxt["concurrency"],
                nxt["output_throughput"],
                nxt.get("ttft_ms_p50"),
                max_tested=line[-1]["concurrency"],
            )
        )
    return out


def stalls(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("compile_stall")]


def client_bound(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("client_bound")]
