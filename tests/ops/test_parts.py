"""ops' pure parts: Prometheus maths, the engine-log parser, the sweep-run summaries and costs.
Every expected value is worked out by hand from the inputs written here."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops import enginelog, runs
from protocol.prometheus import Scrape, histogram_mean, increase
from tests.ops.conftest import META, RUN_A, RUN_B
from tests.ops.support import write_run

PAGE_1 = """# HELP vllm:time_to_first_token_seconds TTFT
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 0.8
vllm:time_to_first_token_seconds_count{model_name="m"} 4.0
# HELP vllm:request_success_total done
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="m"} 3.0
vllm:request_success_total{finished_reason="length",model_name="m"} 1.0
"""
PAGE_2 = (
    PAGE_1.replace('_sum{model_name="m"} 0.8', '_sum{model_name="m"} 2.0')
    .replace('_count{model_name="m"} 4.0', '_count{model_name="m"} 8.0')
    .replace(
        'finished_reason="stop",model_name="m"} 3.0', 'finished_reason="stop",model_name="m"} 7.0'
    )
)


def test_histogram_mean_over_the_run_and_between_two_scrapes() -> None:
    a, b = Scrape.parse(PAGE_1, 100.0), Scrape.parse(PAGE_2, 160.0)
    assert histogram_mean(a, "vllm:time_to_first_token_seconds") == (pytest.approx(0.2), 4)
    # (2.0 - 0.8) / (8 - 4) = 0.3 over the 60 s between the scrapes
    assert histogram_mean(b, "vllm:time_to_first_token_seconds", a) == (pytest.approx(0.3), 4)
    assert histogram_mean(a, "vllm:time_to_first_token_seconds", a) == (None, 0)
    assert histogram_mean(a, "vllm:absent") == (None, 0)


def test_counter_sums_labels_and_increase() -> None:
    a, b = Scrape.parse(PAGE_1), Scrape.parse(PAGE_2)
    assert a.get("vllm:request_success_total") == 4.0
    assert a.get("vllm:request_success_total", finished_reason="length") == 1.0
    assert increase(b, "vllm:request_success_total", a) == 4.0
    assert increase(a, "vllm:request_success_total", b) == 0.0  # a reset reads as no increase
    assert a.by_label("vllm:request_success_total", "finished_reason") == {
        "stop": 3.0,
        "length": 1.0,
    }
    assert "vllm:time_to_first_token_seconds" in a.names()


VLLM_LOG = """entrypoint: compile cache tiny-gemma4-tp1-abc: no persistent copy yet, cold start
entrypoint: /x/vllm serve .cache/models/tiny-gemma4 --max-model-len 2048
(EngineCore pid=1467) INFO 11-30 09:35:23 [kv_cache_utils.py:2327] CPU KV cache size: 1,342,177 tokens, Maximum concurrency for 2,048 tokens per request: 655.36x
(EngineCore pid=1467) INFO 11-30 09:35:20 [tpu_worker.py:1] Init worker | HBM total 124.98 GiB, usable 114.99 GiB, used 26.01 GiB
"""


def test_engine_log_kv_line_and_memory_lines() -> None:
    r = enginelog.parse(VLLM_LOG)
    assert (r.device, r.kv_cache_tokens, r.max_model_len, r.max_concurrency) == (
        "CPU", 1_342_177, 2048, 655.36,
    )  # fmt: skip
    assert r.memory_lines == [VLLM_LOG.splitlines()[3].strip()]
    assert (
        r.compile_cache == "compile cache tiny-gemma4-tp1-abc: no persistent copy yet, cold start"
    )
    empty = enginelog.parse("nothing here")
    assert empty.kv_cache_tokens is None and empty.compile_cache is None


def test_engine_log_missing_file(tmp_path: Path) -> None:
    assert enginelog.read(tmp_path / "absent.log") is None


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    write_run(tmp_path, "a", RUN_A, META)
    write_run(tmp_path, "b", RUN_B, META)
    return tmp_path


def test_summary_peak_knee_slo_and_best_interactive(bench: Path) -> None:
    s = runs.summary(bench, "a")
    assert (s["peak"]["concurrency"], s["peak"]["output_throughput"]) == (32, 520.0)
    assert (s["best_interactive"]["concurrency"], s["best_interactive"]["output_throughput"]) == (
        8,
        500.0,
    )
    assert [(k["context"], k["concurrency"]) for k in s["knees"]] == [(128, 8)]
    assert s["slo_grid"] == {"128": {"1": "pass", "8": "pass", "32": "fail"}}
    assert runs.summary(bench, "latest")["run"] == "b"


def test_compare_flags_the_regressed_cell(bench: Path) -> None:
    c = runs.compare_runs(bench, "a", "b")
    by_conc = {x["concurrency"]: x for x in c["cells"]}
    assert "output_throughput" in by_conc[8]["regressions"]  # 500 -> 400: -20%
    assert by_conc[8]["metrics"]["output_throughput"]["delta"] == pytest.approx(-0.2)
    assert by_conc[32]["regressions"] == []  # 520 -> 600 is better
    assert c["peak_delta"] == pytest.approx(600 / 520 - 1)
    assert c["regressed_cells"] == 1


def test_cost_per_million_tokens(bench: Path) -> None:
    _, _, rows = runs.load(bench, "a")
    # 3.6 USD/h = 0.001 USD/s; at 500 output tok/s: 0.001 / 500 x 1e6 = 2.0 USD per 1M
    c = runs.costs(rows, 3.6)
    assert c["best_interactive"]["usd_per_1m_output"] == pytest.approx(2.0)
    assert c["best_interactive"]["usd_per_1m_total"] == pytest.approx(0.001 / 1500 * 1e6)
    assert c["peak"]["usd_per_1m_output"] == pytest.approx(0.001 / 520 * 1e6)


@pytest.mark.parametrize(
    ("run", "message"),
    [("nope", "unknown run 'nope'"), ("../etc", "invalid run name"), ("", "invalid run name")],
)
def test_bad_runs_say_why(bench: Path, run: str, message: str) -> None:
    with pytest.raises(runs.RunError, match=message.replace("(", r"\(")):
        runs.resolve(bench, run)


def test_no_runs_at_all(tmp_path: Path) -> None:
    with pytest.raises(runs.RunError, match="no sweep runs"):
        runs.resolve(tmp_path / "empty", "latest")


def test_warmup_reports_of_several_replicas_are_read_together(tmp_path: Path) -> None:
    import json

    from ops.service import read_warmup_reports

    base = tmp_path / "report.json"
    assert read_warmup_reports(base) == {"path": str(base), "found": False}
    ok = {"outcome": "passed", "engine": {"instance": "1.0"}, "duration_s": 3.0}
    bad = {"outcome": "failed", "failed_step": "tool_call", "engine": {"instance": "2.0"}}
    (tmp_path / "report-127.0.0.1-8000.json").write_text(json.dumps(ok))
    (tmp_path / "report-127.0.0.1-8001.json").write_text(json.dumps(bad))
    both = read_warmup_reports(base)
    assert (both["verdict"], both["failed_step"]) == ("failed", "tool_call")  # the worst one
    assert [r["engine_instance"] for r in both["replicas"]] == ["1.0", "2.0"]
    (tmp_path / "report-127.0.0.1-8001.json").write_text(json.dumps(ok))
    assert read_warmup_reports(base)["verdict"] == "passed"
    base.write_text(json.dumps(bad))  # one engine: its own report, as before
    assert read_warmup_reports(base)[
        "verdict"
    ] == "failed" and "replicas" not in read_warmup_reports(base)
