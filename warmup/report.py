"""The warm-up report: one JSON file per run plus a summary table on the terminal.

The JSON is the artefact an operator keeps (which engine, which versions, which shapes stalled
and for how long), so it is written on failure too, with the failing step marked.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from warmup.engine import EngineInfo
from warmup.plan import Plan
from warmup.runner import StepResult


def build_report(
    *,
    profile: str,
    plan: Plan,
    results: list[StepResult],
    engine: EngineInfo | None,
    started_at: float,
    outcome: str,
    failed_step: str | None = None,
    error: str | None = None,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The whole run as plain JSON-able data. ``outcome``: passed, failed or engine_lost."""
    finished = time.time()
    steps = [r.to_dict() for r in results]
    ran = {r.step.name for r in results}
    steps += [
        {"name": s.name, "kind": s.kind, "params": s.params(), "status": "not_run"}
        for s in plan.steps
        if s.name not in ran
    ]
    return {
        "outcome": outcome,
        "failed_step": failed_step,
        "error": error,
        "profile": Path(profile).stem,
        "profile_path": profile,
        "started_at": started_at,
        "finished_at": finished,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
        "duration_s": round(finished - started_at, 3),
        "engine": engine.to_dict() if engine else None,
        "plan": plan.summary(),
        "stall_thresholds": thresholds or {},
        "stalls": [r.step.name for r in results if r.stall],
        "steps": steps,
    }


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write atomically (a reader never sees half a report), creating parent dirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_table(report: dict[str, Any]) -> Table:
    engine = report.get("engine") or {}
    replica = f" | {report['replica']}" if report.get("replica") else ""
    title = (
        f"warm-up {report['outcome']}{replica} | profile {report['profile']} | "
        f"{engine.get('model') or '?'} (vLLM {engine.get('version') or '?'}) | "
        f"{report['duration_s']:.1f} s"
    )
    table = Table(title=title)
    for col, justify in (
        ("step", "left"),
        ("first s", "right"),
        ("second s", "right"),
        ("ratio", "right"),
        ("result", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for step in report["steps"]:
        if step["status"] == "passed":
            result = "[yellow]STALL[/]" if step.get("stall") else "[green]ok[/]"
        elif step["status"] == "failed":
            status = step.get("http_status")
            result = f"[red]FAILED[/] {'HTTP ' + str(status) + ': ' if status else ''}{step.get('error')}"
        else:
            result = "[dim]not run[/]"
        ratio = step.get("ratio")
        table.add_row(
            step["name"],
            _secs(step.get("first_s")),
            _secs(step.get("second_s")),
            "-" if ratio is None else f"{ratio:.1f}",
            result,
        )
    return table


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(report))
    if report["stalls"]:
        console.print(f"[yellow]compile stalls:[/] {', '.join(report['stalls'])}")
    if report["outcome"] != "passed":
        console.print(f"[red]warm-up {report['outcome']}:[/] {report.get('error')}")
