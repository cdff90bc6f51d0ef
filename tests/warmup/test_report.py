"""The JSON report and the summary table (built from real result objects, no engine)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from env.settings import EngineEnv, EngineSettings, WarmupSettings
from warmup.engine import EngineInfo
from warmup.plan import build_plan
from warmup.report import build_report, print_summary, write_report
from warmup.runner import StepResult


def sample_report(tmp_path: Path) -> dict:
    plan = build_plan(EngineSettings(), EngineEnv(), WarmupSettings())
    ok = StepResult(plan.steps[0], first_s=0.5, second_s=0.1)
    stalled = StepResult(plan.steps[1], first_s=30.0, second_s=0.2, stall=True)
    failed = StepResult(plan.steps[2], first_s=0.1, error="bad request", http_status=400)
    return build_report(
        profile=str(tmp_path / "cpu.env"),
        plan=plan,
        results=[ok, stalled, failed],
        engine=EngineInfo(url="http://e", instance="1.0", model="m", version="0.32.0"),
        started_at=time.time() - 3,
        outcome="failed",
        failed_step=failed.step.name,
        error="step tools failed: HTTP 400: bad request",
    )


def test_report_lists_every_planned_step_and_the_stalls(tmp_path: Path) -> None:
    report = sample_report(tmp_path)
    plan_names = report["plan"]["steps"]
    assert [s["name"] for s in report["steps"]] == plan_names
    statuses = [s["status"] for s in report["steps"]]
    assert statuses[:3] == ["passed", "passed", "failed"]
    assert set(statuses[3:]) == {"not_run"}
    assert report["stalls"] == [plan_names[1]]
    assert report["steps"][1]["ratio"] == 150.0
    assert report["profile"] == "cpu" and report["duration_s"] >= 3
    assert report["engine"]["version"] == "0.32.0"


def test_report_is_written_atomically_as_json(tmp_path: Path) -> None:
    path = write_report(sample_report(tmp_path), tmp_path / "deep" / "report.json")
    assert json.loads(path.read_text())["outcome"] == "failed"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"], "no temp file left"


def test_summary_names_the_stall_and_the_failure(tmp_path: Path) -> None:
    console = Console(record=True, width=160)
    print_summary(sample_report(tmp_path), console)
    text = console.export_text()
    assert "STALL" in text and "FAILED" in text and "HTTP 400" in text and "not run" in text
    assert "compile stalls: chat_stream" in text
