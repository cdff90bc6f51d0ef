"""Deltas between two sweeps, cell by cell (the seeds' "historical performance matrix").

Cells are matched on (context, concurrency). For each metric the table shows A, B and the
relative change B vs A; whether a change is good depends on the metric (more throughput is
good, more latency is bad), so regressions are coloured red and improvements green.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import report

# metric -> (label, higher is better)
METRICS = {
    "output_throughput": ("out tok/s", True),
    "total_throughput": ("total tok/s", True),
    "ttft_ms_p50": ("TTFT p50 ms", False),
    "ttft_ms_p99": ("TTFT p99 ms", False),
    "tpot_ms_p50": ("TPOT p50 ms", False),
    "itl_ms_p99": ("ITL p99 ms", False),
    "error_rate": ("err rate", False),
}


def delta(a: float | None, b: float | None) -> float | None:
    """Relative change of b vs a (0.1 = +10%); None when undefined."""
    if a is None or b is None or a == "" or b == "":
        return None
    a, b = float(a), float(b)
    if a == 0:
        return None if b == 0 else float("inf")
    return (b - a) / abs(a)


def pair_rows(rows_a: list[dict], rows_b: list[dict]) -> list[tuple[dict | None, dict | None]]:
    """Rows of A and B matched on (context, concurrency), in grid order."""
    a = {(r["context"], r["concurrency"]): r for r in rows_a}
    b = {(r["context"], r["concurrency"]): r for r in rows_b}
    return [(a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())]


def compare(rows_a: list[dict], rows_b: list[dict], threshold: float = 0.05) -> list[dict]:
    """One dict per cell: the two statuses and, per metric, a, b and delta; ``regressions``
    lists metrics that moved the wrong way by more than ``threshold``."""
    out = []
    for ra, rb in pair_rows(rows_a, rows_b):
        ref = ra or rb
        item: dict = {
            "context": ref["context"],
            "concurrency": ref["concurrency"],
            "status_a": ra["status"] if ra else "absent",
            "status_b": rb["status"] if rb else "absent",
            "regressions": [],
        }
        for key, (_, higher_better) in METRICS.items():
            va, vb = (ra or {}).get(key), (rb or {}).get(key)
            d = delta(va, vb)
            item[key] = (va, vb, d)
            if d is not None and (-d if higher_better else d) > threshold:
                item["regressions"].append(key)
        out.append(item)
    return out


def _cell(va, vb, d, higher_better: bool, threshold: float) -> str:
    if va in (None, "") and vb in (None, ""):
        return "-"
    text = f"{report.fmt(va)} -> {report.fmt(vb)}"
    if d is None:
        return text
    pct = "inf" if d == float("inf") else f"{d:+.1%}"
    worse = (-d if higher_better else d) > threshold
    better = (d if higher_better else -d) > threshold
    colour = "red" if worse else "green" if better else "default"
    return f"{text} [{colour}]({pct})[/]"


def print_compare(a: str | Path, b: str | Path, console: Console, threshold: float = 0.05) -> int:
    """Print the delta table; returns the number of cells with a regression."""
    meta_a, rows_a = report.load(a)
    meta_b, rows_b = report.load(b)
    items = compare(rows_a, rows_b, threshold)
    console.print(f"A: {a}  ({meta_a.get('started')}, {meta_a.get('url')})")
    console.print(f"B: {b}  ({meta_b.get('started')}, {meta_b.get('url')})")
    table = Table(title=f"B vs A (changes beyond {threshold:.0%} coloured)")
    table.add_column("ctx", justify="right")
    table.add_column("conc", justify="right")
    table.add_column("status")
    for label, _ in METRICS.values():
        table.add_column(label, justify="right")
    for item in items:
        status = (
            item["status_a"]
            if item["status_a"] == item["status_b"]
            else (f"{item['status_a']} -> {item['status_b']}")
        )
        cells = [
            _cell(*item[key], higher_better, threshold)
            for key, (_, higher_better) in METRICS.items()
        ]
        table.add_row(str(item["context"]), str(item["concurrency"]), status, *cells)
    console.print(table)
    regressed = [i for i in items if i["regressions"]]
    console.print(f"{len(regressed)} of {len(items)} cells regressed beyond {threshold:.0%}.")
    return len(regressed)
