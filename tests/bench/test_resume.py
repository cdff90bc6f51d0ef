"""``python -m bench gateway --resume`` end to end on the synthetic upstreams (a small run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import resume
from bench.cli import build_parser
from tests.support.process import REPO


def test_resume_is_a_mode_of_the_gateway_bench() -> None:
    args = build_parser().parse_args(["gateway", "--resume", "--cut-after", "3"])
    assert args.resume and args.resume_run is resume.cmd_resume and args.cut_after == 3
    assert build_parser().parse_args(["gateway"]).resume is False


def test_cpu_per_chunk_on_and_off_and_the_switch_gap(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench", "gateway", "--resume", "--concurrency", "2",
           "--tokens", "8", "--itl-ms", "5", "--ttft-ms", "5", "--rounds", "1", "--idle-s", "0.3",
           "--gap-streams", "4", "--gap-concurrency", "2", "--cut-after", "3",
           "--out", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    [row] = res["rows"]
    # 8 requests x 8 chunks a side: a few ms of gateway CPU, below the CPU clock's 10 ms tick,
    # so the ratio may be None here (a CI run measured 0 on one side); the bench's real runs
    # are sized for it (gateway/README.md). What a small run shows: every chunk, no error.
    assert row["errors_on"] == 0 and row["errors_off"] == 0
    assert row["chunks_per_side"] == 8 * 8, row
    gap = res["gap"]
    # every cut stream was continued: [DONE], all its chunks, the usage of all of them
    assert (gap["complete"], gap["failed"]) == (4, 0) and gap["gap_ms_p50"] is not None
    assert "switch gap" in (tmp_path / "results.md").read_text()
