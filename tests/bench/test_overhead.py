"""``python -m bench gateway``: the row maths on hand-made records, and end to end on a tiny load
(the real gateway in front of the synthetic upstream, both started and stopped by the command)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from array import array
from pathlib import Path

import psutil
import pytest

from bench.overhead import Side, compare_row, pin_plan, verdict
from bench.records import RequestRecord
from tests.support import fakehttp
from tests.support.fakehttp import Request
from tests.support.process import REPO


def rec(ttft_s: float, lags_s: tuple[float, ...] = (), ok: bool = True) -> RequestRecord:
    r = RequestRecord(arrival=0.0, start=1.0, first_token=1.0 + ttft_s)
    r.outcome = "ok" if ok else "error"
    r.chunk_lag = array("d", lags_s)
    return r


def test_row_against_hand_worked_values() -> None:
    """Gateway: 960 tokens in 4 s = 240 tok/s; direct: 1000 in 4 s = 250 tok/s; 240 / 250 = 0.96.

    TTFT (ms), numpy's linear percentiles: gateway 10, 12, 14, 16 -> p50 13, p99 at rank
    0.99 x 3 = 2.97 -> 14 + 0.97 x 2 = 15.94; direct 10, 11, 12, 13 -> p50 11.5, p99 12.97.
    Added: p50 1.5, p99 2.97. Chunk lags (ms): gateway 1, 2, 3, 4 -> p50 2.5, p99 3.97; direct
    1, 1, 2, 2 -> p50 1.5, p99 2; added 1.0 and 1.97. CPU: 0.48 s / 960 tokens x 1000 = 0.5.
    The failed gateway request counts as a request and an error, never in the percentiles.
    """
    g = Side(tokens=960, durations=4.0, cpu_s=0.48, loop_lag_ms_p99=3.0)
    g.records = [rec(0.010, (0.001, 0.002)), rec(0.012, (0.003, 0.004)), rec(0.014), rec(0.016),
                 rec(5.0, (9.0,), ok=False)]  # fmt: skip
    d = Side(tokens=1000, durations=4.0, loop_lag_ms_p99=7.0)
    d.records = [rec(0.010, (0.001, 0.001)), rec(0.011, (0.002, 0.002)), rec(0.012), rec(0.013)]
    row = compare_row(16, g, d)
    expected = {
        "concurrency": 16, "requests_per_side": 5,
        "direct_tok_s": 250.0, "gateway_tok_s": 240.0, "throughput_ratio": 0.96,
        "direct_ttft_ms_p50": 11.5, "gateway_ttft_ms_p50": 13.0, "added_ttft_ms_p50": 1.5,
        "direct_ttft_ms_p99": 12.97, "gateway_ttft_ms_p99": 15.94, "added_ttft_ms_p99": 2.97,
        "direct_chunk_lag_ms_p50": 1.5, "added_chunk_ms_p50": 1.0, "added_chunk_ms_p99": 1.97,
        "gateway_cpu_s_per_1k_tokens": 0.5, "errors_direct": 0, "errors_gateway": 1,
        "client_loop_lag_ms_p99": 7.0,
    }  # fmt: skip
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, abs=1e-9), key


def test_row_without_data_says_none_instead_of_zero() -> None:
    row = compare_row(1, Side(tokens=10, durations=1.0, cpu_s=0.1), Side(), gateway_cpu_known=False)
    assert row["throughput_ratio"] is None  # no direct throughput: no ratio
    assert row["added_ttft_ms_p50"] is None and row["added_chunk_ms_p99"] is None
    assert row["gateway_cpu_s_per_1k_tokens"] is None  # no gateway PID: CPU unknown


def test_verdict_only_at_256_streams() -> None:
    base = {"throughput_ratio": 0.98, "added_ttft_ms_p50": 0.5, "added_ttft_ms_p99": 6.0}
    assert verdict([{**base, "concurrency": 16}]) is None
    line = verdict([{**base, "concurrency": 256}])
    assert line is not None
    assert "throughput 0.980 (>= 0.97: PASS)" in line
    assert "added TTFT p50 ms 0.500 (<= 1.0: PASS)" in line
    assert "added TTFT p99 ms 6.000 (<= 5.0: MISS)" in line


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
        assert r["gateway_tok_s"] > 0 and r["direct_tok_s"] > 0 and r["throughput_ratio"] > 0
        assert r["gateway_cpu_s_per_1k_tokens"] is not None and r["gateway_peak_rss_mib"] > 10
        assert r["added_chunk_ms_p50"] is not None  # the synthetic upstream stamps its chunks
    assert "| streams |" in (tmp_path / "results.md").read_text()


ALLOWED = os.sched_getaffinity(0)  # what the command inherits from this test
GATEWAY_CPUS = {max(ALLOWED)} if len(ALLOWED) > 1 else ALLOWED
OTHER_CPUS = ALLOWED - GATEWAY_CPUS or ALLOWED


def test_burst_starts_pinned(tmp_path: Path) -> None:
    meta = run_bench(tmp_path, "--ramp-s", "0", "--pin")["meta"]
    assert meta["ramp_s"] == 0
    # what --pin applied, None on a one-CPU machine (nothing to separate)
    expected = {"gateway": sorted(GATEWAY_CPUS), "others": sorted(OTHER_CPUS)}
    assert meta["pinned"] == (expected if len(ALLOWED) > 1 else None)


def test_pin_plan_uses_the_cpus_this_process_may_run_on() -> None:
    assert pin_plan({0, 1, 2, 3}) == ({3}, {0, 1, 2})
    assert pin_plan({2, 5}) == ({5}, {2})  # a cpuset (container, taskset): not 0..n-1
    assert pin_plan({7}) is None


def test_pin_puts_the_gateway_tree_on_its_own_cpu_and_the_rest_on_the_others(
    tmp_path: Path,
) -> None:
    """``--pin`` with ``--gateway-url``/``--gateway-pid``: a stand-in gateway (a process with a
    child) and a fake URL whose ``/v1/models``, the command's first request after pinning, reads
    every process's CPU set while the command waits for the answer, then refuses (503)."""
    tree = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; c = subprocess.Popen([sys.executable,"
         " '-c', 'import time; time.sleep(600)']); print(c.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    bench: list[subprocess.Popen[str]] = []
    seen: dict[str, set[int]] = {}

    def models(req: Request) -> fakehttp.Answer:
        assert (req.method, req.path) == ("GET", "/v1/models")
        kids = psutil.Process(bench[0].pid).children(recursive=True)
        (synthetic,) = [p for p in kids if "synthetic" in p.cmdline()]
        seen.update(
            bench=os.sched_getaffinity(bench[0].pid),
            synthetic=os.sched_getaffinity(synthetic.pid),
            gateway=os.sched_getaffinity(tree.pid),
            gateway_child=os.sched_getaffinity(child),
        )
        return 503, {"error": {"message": "a stand-in", "type": "x", "param": None, "code": None}}

    try:
        child = int(tree.stdout.readline())  # type: ignore[union-attr]
        with fakehttp.serve(models) as url:
            cmd = [sys.executable, "-m", "bench", "gateway", "--pin", "--gateway-url", url,
                   "--gateway-pid", str(tree.pid), "--out", str(tmp_path)]  # fmt: skip
            bench.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))  # fmt: skip
            out, err = bench[0].communicate(timeout=120)
        assert bench[0].returncode == 1 and "503 Service Unavailable" in err, out + err
        assert seen == {
            "bench": OTHER_CPUS, "synthetic": OTHER_CPUS,
            "gateway": GATEWAY_CPUS, "gateway_child": GATEWAY_CPUS,
        }  # fmt: skip
    finally:
        os.killpg(tree.pid, signal.SIGKILL)
        tree.wait(timeout=30)
