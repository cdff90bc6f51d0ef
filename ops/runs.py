"""Benchmark sweep runs (``python -m bench sweep`` output) as summaries, deltas and costs.

A run is a directory ``<OPS_BENCH_DIR>/<name>/cells.json``. The judgements are the sweep's own
(``bench.analysis``: peak, saturation knee per context, SLO pass, best interactive cell), so the
ops server and ``report.md`` cannot disagree. Cost per 1M tokens = price per hour / 3600 /
tokens per second x 1e6, at the measured throughput of a cell.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import analysis, compare, report
from bench.analysis import Policy

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunError(ValueError):
    """A run that cannot be used (unknown, unreadable): the message says which and why."""


def available(bench_dir: Path) -> list[str]:
    """Run names with a cells.json, oldest first (names are timestamps by default)."""
    if not bench_dir.is_dir():
        return []
    return sorted(p.parent.name for p in bench_dir.glob("*/cells.json"))


def resolve(bench_dir: Path, run: str) -> Path:
    """``run`` (a name under ``bench_dir``, or ``latest``) -> its directory."""
    names = available(bench_dir)
    if run == "latest":
        if not names:
            raise RunError(f"no sweep runs under {bench_dir} (python -m bench sweep writes them)")
        run = names[-1]
    if not NAME.match(run):
        raise RunError(f"invalid run name {run!r}: a directory name under {bench_dir}")
    if run not in names:
        listed = ", ".join(names[-10:]) or "none"
        raise RunError(f"unknown run {run!r} under {bench_dir}; available: {listed}")
    return bench_dir / run


def load(bench_dir: Path, run: str) -> tuple[str, dict, list[dict]]:
    path = resolve(bench_dir, run)
    try:
        meta, rows = report.load(path)
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"run {path.name}: cells.json unreadable: {exc}") from exc
    policy = policy_of(meta)
    return path.name, meta, [analysis.derive(r, policy) for r in rows]


def policy_of(meta: dict) -> Policy:
    fields = Policy.__dataclass_fields__
    return Policy(**{k: v for k, v in (meta.get("policy") or {}).items() if k in fields})


CELL_KEYS = (
    "context", "concurrency", "output_throughput", "total_throughput", "request_throughput",
    "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "itl_ms_p99", "error_rate", "slo_attainment",
)  # fmt: skip


def cell(row: dict | None) -> dict[str, Any] | None:
    return {k: row.get(k) for k in CELL_KEYS} if row else None


def _verdict(row: dict) -> str:
    """``pass`` / ``fail`` (ran, SLOs missed) / the status of a cell that did not run cleanly."""
    if row.get("slo_pass"):
        return "pass"
    return "fail" if row.get("status") == "ok" else str(row.get("status") or "?")


def summary(bench_dir: Path, run: str) -> dict[str, Any]:
    name, meta, rows = load(bench_dir, run)
    policy = policy_of(meta)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.get("status") or "?"] = statuses.get(r.get("status") or "?", 0) + 1
    contexts = sorted({r["context"] for r in rows})
    concurrencies = sorted({r["concurrency"] for r in rows})
    grid = {
        str(ctx): {str(r["concurrency"]): _verdict(r) for r in rows if r["context"] == ctx}
        for ctx in contexts
    }
    return {
        "run": name,
        "model": meta.get("model"),
        "url": meta.get("url"),
        "started": meta.get("started"),
        "output_len": meta.get("output_len"),
        "slo": meta.get("slo"),
        "cells": len(rows),
        "statuses": statuses,
        "contexts": contexts,
        "concurrencies": concurrencies,
        "peak": cell(analysis.peak(rows)),
        "best_interactive": cell(analysis.best_interactive(rows)),
        "knees": [asdict(k) for k in analysis.knees(rows, policy.knee_gain)],
        "slo_grid": grid,
        "compile_stalls": [
            {"context": r["context"], "concurrency": r["concurrency"]}
            for r in analysis.stalls(rows)
        ],
        "client_bound_cells": len(analysis.client_bound(rows)),
    }


def compare_runs(bench_dir: Path, a: str, b: str, threshold: float = 0.05) -> dict[str, Any]:
    name_a, _, rows_a = load(bench_dir, a)
    name_b, _, rows_b = load(bench_dir, b)
    cells = compare.compare(rows_a, rows_b, threshold)
    out_cells = []
    for item in cells:
        metrics = {
            key: {"a": va, "b": vb, "delta": d}
            for key, (va, vb, d) in ((k, item[k]) for k in compare.METRICS)
        }
        out_cells.append(
            {
                "context": item["context"],
                "concurrency": item["concurrency"],
                "status_a": item["status_a"],
                "status_b": item["status_b"],
                "regressions": item["regressions"],
                "metrics": metrics,
            }
        )
    pa, pb = analysis.peak(rows_a), analysis.peak(rows_b)
    return {
        "a": name_a,
        "b": name_b,
        "threshold": threshold,
        "peak_a": cell(pa),
        "peak_b": cell(pb),
        "peak_delta": compare.delta(
            pa["output_throughput"] if pa else None, pb["output_throughput"] if pb else None
        ),
        "regressed_cells": sum(1 for c in out_cells if c["regressions"]),
        "cells": out_cells,
    }


def per_million(price_per_hour: float, tok_s: float | None) -> float | None:
    """USD per 1M tokens at ``tok_s`` tokens per second for a deployment at ``price_per_hour``."""
    if not tok_s:
        return None
    return price_per_hour / 3600.0 / tok_s * 1e6


def costs(rows: list[dict], price_per_hour: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, row in (
        ("peak", analysis.peak(rows)),
        ("best_interactive", analysis.best_interactive(rows)),
    ):
        out[label] = (
            None
            if row is None
            else {
                "context": row["context"],
                "concurrency": row["concurrency"],
                "output_tok_s": row.get("output_throughput"),
                "total_tok_s": row.get("total_throughput"),
                "usd_per_1m_output": per_million(price_per_hour, row.get("output_throughput")),
                "usd_per_1m_total": per_million(price_per_hour, row.get("total_throughput")),
            }
        )
    return out
