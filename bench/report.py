"""Writing a sweep's rows: CSV and JSON (one row per cell) and the markdown report.

All three are written from the same list of rows, so they cannot disagree; the schema (column
order and meaning) is ``COLUMNS`` and is documented in bench/README.md.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from bench import analysis
from bench.analysis import Policy

IDENTITY = ["context", "concurrency", "output_len", "status", "reason", "requests_planned"]
COUNTS = ["requests", "completed", "errors", "timeouts", "error_rate", "duration_s"]
THROUGHPUT = [
    "input_tokens",
    "output_tokens",
    "request_throughput",
    "output_throughput",
    "total_throughput",
    "goodput",
    "slo_attainment",
    "slo_pass",
]
LATENCY = [
    f"{m}_ms_{s}"
    for m in ("ttft", "tpot", "itl", "e2el", "queue")
    for s in ("mean", "p50", "p90", "p99")
]
LATENCY.insert(LATENCY.index("itl_ms_p99") + 1, "itl_ms_max")
CLIENT = [
    "observed_concurrency",
    "peak_concurrency",
    "client_processes",
    "loop_lag_ms_p99",
    "loop_lag_ms_max",
    "client_bound",
    "usage_missing",
]
JUDGED = ["compile_stall", "cost_per_1m_output_usd", "cost_per_1m_total_usd", "first_error"]
COLUMNS = IDENTITY + COUNTS + THROUGHPUT + LATENCY + CLIENT + JUDGED

SYMBOL = {
    "skipped_max_len": "len",
    "skipped_min_context": "min",
    "skipped_after_failure": "skip",
    "failed": "FAIL",
    "interrupted": "int",
    "not_run": "-",
    "planned": "-",
}


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})


def write_json(meta: dict, rows: list[dict], path: Path) -> None:
    doc = {
        "schema": "gemma4-serving/bench-sweep/1",
        "meta": meta,
        "columns": COLUMNS,
        "cells": [{k: row.get(k) for k in COLUMNS} for row in rows],
    }
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def load(path: str | Path) -> tuple[dict, list[dict]]:
    """(meta, rows) of a run: its directory or its cells.json."""
    p = Path(path)
    if p.is_dir():
        p = p / "cells.json"
    doc = json.loads(p.read_text())
    return doc.get("meta", {}), doc["cells"]


def fmt(value: Any, digits: int = 1) -> str:
    """The one number format of the markdown report."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _grid(rows: list[dict], cell: Any, title: str) -> list[str]:
    """A context x concurrency markdown table; ``cell(row)`` renders a measured cell."""
    contexts = sorted({r["context"] for r in rows})
    concs = sorted({r["concurrency"] for r in rows})
    by = {(r["context"], r["concurrency"]): r for r in rows}
    out = [f"| {title} | " + " | ".join(f"c={c}" for c in concs) + " |"]
    out.append("|---:|" + "---:|" * len(concs))
    for ctx in contexts:
        vals = []
        for conc in concs:
            r = by.get((ctx, conc))
            if r is None:
                vals.append("")
            elif r["status"] in ("ok", "failed", "interrupted") and r.get("requests"):
                vals.append(cell(r))
            else:
                vals.append(SYMBOL.get(r["status"], r["status"]))
        out.append(f"| {ctx} | " + " | ".join(vals) + " |")
    return out


def _where(r: dict) -> str:
    return f"context {r['context']} tokens, concurrency {r['concurrency']}"


def markdown(meta: dict, rows: list[dict], policy: Policy) -> str:
    """The operator's report: decisions first, grids after."""
    L: list[str] = ["# Benchmark report", ""]
    slo = meta.get("slo", {})
    L += [
        "| | |",
        "|---|---|",
        f"| target | `{meta.get('url')}` ({meta.get('api')} API), model `{meta.get('model')}` |",
        f"| when | {meta.get('started')} to {meta.get('finished')} on `{meta.get('host')}` |",
        f"| grid | context {meta.get('contexts')} x concurrency {meta.get('concurrencies')}, "
        f"output {meta.get('output_len')} tokens, max-model-len {meta.get('max_model_len')} |",
        f"| SLOs | TTFT {fmt(slo.get('ttft_ms'))} ms, TPOT {fmt(slo.get('tpot_ms'))} ms, "
        f"E2EL {fmt(slo.get('e2el_ms'))} ms; pass = {policy.attainment:.0%} of requests meet "
        "all |",
        f"| price | {_price(policy)} |",
        f"| command | `{meta.get('command')}` |",
        "",
        "## Summary",
        "",
    ]
    if meta.get("interrupted"):
        L += ["**Interrupted (Ctrl-C): partial results.**", ""]
    top = analysis.peak(rows)
    if top:
        L.append(
            f"- **Peak throughput**: {fmt(top.get('output_throughput'))} output tok/s "
            f"({fmt(top.get('total_throughput'))} total tok/s) at {_where(top)}; "
            f"TTFT p50 {fmt(top.get('ttft_ms_p50'))} ms, p99 {fmt(top.get('ttft_ms_p99'))} ms; "
            f"{fmt(top.get('cost_per_1m_output_usd'), 4)} USD per 1M output tokens, "
            f"{fmt(top.get('cost_per_1m_total_usd'), 4)} USD per 1M total tokens."
        )
    else:
        L.append("- **Peak throughput**: no cell completed.")
    best = analysis.best_interactive(rows)
    if best:
        L.append(
            f"- **Best interactive cell** (meets the SLOs, most output tok/s): {_where(best)}: "
            f"{fmt(best.get('output_throughput'))} output tok/s, TTFT p99 "
            f"{fmt(best.get('ttft_ms_p99'))} ms, TPOT p99 {fmt(best.get('tpot_ms_p99'))} ms; "
            f"{fmt(best.get('cost_per_1m_output_usd'), 4)} USD per 1M output tokens."
        )
    else:
        L.append("- **Best interactive cell**: no cell meets the SLOs.")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    L.append("- Cells: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".")
    bound = analysis.client_bound(rows)
    if bound:
        L.append(
            f"- **Client-bound cells: {len(bound)}** (the load generator could not keep the "
            "target concurrency or its event loop lagged; their latencies are upper bounds): "
            + ", ".join(f"{r['context']}/{r['concurrency']}" for r in bound)
            + "."
        )
    L += ["", "## Saturation knee per context length", ""]
    L += [
        f"Knee: the last concurrency before the next tested one gains less than "
        f"{policy.knee_gain:.0%} output throughput.",
        "",
        "| context | knee concurrency | output tok/s there | TTFT p50 there (ms) "
        "| next concurrency | output tok/s | TTFT p50 (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in analysis.knees(rows, policy.knee_gain):
        if k.concurrency is None:
            L.append(f"| {k.context} | not reached (max tested {k.max_tested}) | | | | | |")
        else:
            L.append(
                f"| {k.context} | {k.concurrency} | {fmt(k.throughput)} | {fmt(k.ttft_p50_ms)} "
                f"| {k.next_concurrency} | {fmt(k.next_throughput)} | {fmt(k.next_ttft_p50_ms)} |"
            )
    legend = (
        "Legend: `len` input + output > max-model-len; `min` below the shortest prompt; "
        "`skip` skipped after a failure at lower concurrency; `FAIL` error/timeout rate above "
        "threshold; `int` interrupted; `-` not run."
    )
    L += ["", "## SLO pass/fail", "", legend, ""]
    L += _grid(rows, lambda r: "pass" if r.get("slo_pass") else "fail", "context \\ conc")
    L += ["", "## Output throughput (tok/s)", ""]
    L += _grid(rows, lambda r: fmt(r.get("output_throughput"), 0), "context \\ conc")
    L += ["", "## TTFT p50 / p99 (ms)", ""]
    L += _grid(
        rows,
        lambda r: f"{fmt(r.get('ttft_ms_p50'), 0)} / {fmt(r.get('ttft_ms_p99'), 0)}",
        "context \\ conc",
    )
    L += ["", "## TPOT p50 (ms)", ""]
    L += _grid(rows, lambda r: fmt(r.get("tpot_ms_p50"), 2), "context \\ conc")
    L += ["", "## Error + timeout rate", ""]
    L += _grid(rows, lambda r: f"{(r.get('error_rate') or 0.0):.1%}", "context \\ conc")
    L += ["", "## Cost per 1M output tokens", ""]
    if policy.price_per_hour is None:
        L.append(f"No price, so no cost figures ({policy.price_source}).")
    else:
        L += [f"USD, at {_price(policy)}.", ""]
        L += _grid(rows, lambda r: fmt(r.get("cost_per_1m_output_usd"), 3), "context \\ conc")
    L += ["", "## Compile stalls", ""]
    stalled = analysis.stalls(rows)
    if stalled:
        L += [
            f"Max ITL above {policy.stall_factor:g} x p99 ITL and above "
            f"{policy.stall_min_ms:g} ms:",
            "",
            "| context | concurrency | ITL p99 (ms) | ITL max (ms) |",
            "|---:|---:|---:|---:|",
        ]
        L += [
            f"| {r['context']} | {r['concurrency']} | {fmt(r['itl_ms_p99'])} "
            f"| {fmt(r['itl_ms_max'])} |"
            for r in stalled
        ]
    else:
        L.append("None: no cell's max ITL stands far above its p99.")
    notes = [r for r in rows if r.get("reason") or r.get("first_error")]
    if notes:
        L += ["", "## Skipped and failed cells", "", "| context | concurrency | status | why |"]
        L.append("|---:|---:|---|---|")
        for r in notes:
            why = (r.get("reason") or "") + (
                f" (first error: {r['first_error']})" if r.get("first_error") else ""
            )
            why = why.replace("|", "\\|").replace("\n", " ")
            L.append(f"| {r['context']} | {r['concurrency']} | {r['status']} | {why} |")
    L += [
        "",
        "Files: `cells.csv` and `cells.json` (one row per cell, schema in bench/README.md), "
        "`heatmap_*.png`.",
        "",
    ]
    return "\n".join(L)


def write_all(meta: dict, rows: list[dict], policy: Policy, out_dir: Path) -> None:
    """CSV, JSON and markdown; plots are written by ``bench.plots`` (matplotlib is slower)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "cells.csv")
    write_json(meta, rows, out_dir / "cells.json")
    (out_dir / "report.md").write_text(markdown(meta, rows, policy))


def _price(policy: Policy) -> str:
    """The price and where it came from (a run without one says so: no cost figures)."""
    if policy.price_per_hour is None:
        return f"none ({policy.price_source}): no cost figures"
    return (
        f"{policy.price_per_hour:g} USD per hour for the deployment ({policy.chips} chips), "
        f"from {policy.price_source}"
    )
