"""``python -m bench gateway`` end to end on a tiny load: the real gateway in front of the
synthetic upstream, both started and stopped by the command itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.process import REPO


def run_bench(out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "bench", "gateway", "--concurrency", "1,4", "--tokens", "4",
           "--itl-ms", "5", "--rounds", "2", "--idle-s", "0.5", "--out", str(out), *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "targets at 256 streams" not in proc.stdout  # no 256 row here, so no verdict
    return json.loads((out / "results.json").read_text())


def test_gateway_vs_direct_rows(tmp_path: Path) -> None:
    res = run_bench(tmp_path)
    meta, rows = res["meta"], res["rows"]
    assert meta["ramp_s"] == 4 * 5 / 1000  # default: one synthetic response time
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["errors_gateway"] == 0 and r["errors_direct"] == 0
        assert r["requests_per_side"] == 2 * 8  # 2 rounds x max(8, 2 x c)
        assert r["gateway_tok_s"] > 0 and r["direct_tok_s"] > 0
        assert r["throughput_ratio"] == r["gateway_tok_s"] / r["direct_tok_s"]
        assert r["gateway_cpu_s_per_1k_tokens"] is not None and r["gateway_peak_rss_mib"] > 10
        assert r["added_chunk_ms_p50"] is not None  # the synthetic upstream stamps its chunks
    assert "| streams |" in (tmp_path / "results.md").read_text()


def test_burst_starts(tmp_path: Path) -> None:
    assert run_bench(tmp_path, "--ramp-s", "0")["meta"]["ramp_s"] == 0
