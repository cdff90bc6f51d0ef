"""Metric maths on hand-written timings, with expected values worked out by hand."""

from __future__ import annotations

from array import array

import pytest

from bench.metrics import Slo, concurrency_profile, output_tokens, summarize, tpot
from bench.records import RequestRecord


def rec(arrival, start, finish, first=None, itl=(), n=None, prompt=100, outcome="ok"):
    r = RequestRecord(arrival=arrival, start=start, finish=finish, prompt_tokens=prompt)
    r.outcome = outcome
    if first is not None:
        r.first_token = first
        r.itl = array("d", itl)
        r.last_token = first + sum(itl)
    if n is not None:
        r.usage_seen, r.output_tokens = True, n
    return r


@pytest.fixture
def cell() -> list[RequestRecord]:
    return [
        # TTFT 100 ms, gaps 20/30/50 ms, E2EL 200 ms, n 4 -> TPOT 100/3 ms, no queue
        rec(10.0, 10.0, 10.21, first=10.1, itl=(0.02, 0.03, 0.05), n=4),
        # queued 50 ms, TTFT 300 ms, gap 100 ms, E2EL 400 ms, n 2 -> TPOT 100 ms
        rec(10.0, 10.05, 10.5, first=10.35, itl=(0.1,), n=2),
        rec(10.0, 10.2, 10.6, outcome="error"),
        rec(10.0, 10.3, 11.0, outcome="timeout"),
    ]


def test_counts_duration_and_throughputs(cell):
    m = summarize(cell)
    assert (m["requests"], m["completed"], m["errors"], m["timeouts"]) == (4, 2, 1, 1)
    assert m["error_rate"] == 0.5
    # first send 10.0 to last finish 11.0 (the timeout), failures included
    assert m["duration_s"] == pytest.approx(1.0)
    assert m["request_throughput"] == pytest.approx(2.0)
    assert m["output_throughput"] == pytest.approx(6.0)  # 4 + 2 tokens
    assert m["total_throughput"] == pytest.approx(206.0)  # (100 + 100 + 6) / 1 s
    assert (m["input_tokens"], m["output_tokens"]) == (200, 6)


def test_latency_statistics(cell):
    m = summarize(cell)
    assert m["ttft_ms_mean"] == pytest.approx(200.0)
    assert m["ttft_ms_p50"] == pytest.approx(200.0)
    assert m["ttft_ms_p90"] == pytest.approx(280.0)  # 100 + 0.9 x 200
    assert m["ttft_ms_p99"] == pytest.approx(298.0)
    assert m["e2el_ms_mean"] == pytest.approx(300.0)
    assert m["tpot_ms_mean"] == pytest.approx((100 / 3 + 100) / 2)
    # ITL pooled over requests: 20, 30, 50, 100 ms
    assert m["itl_ms_mean"] == pytest.approx(50.0)
    assert m["itl_ms_p50"] == pytest.approx(40.0)
    assert m["itl_ms_p90"] == pytest.approx(85.0)  # 50 + 0.7 x 50
    assert m["itl_ms_p99"] == pytest.approx(98.5)
    assert m["itl_ms_max"] == pytest.approx(100.0)
    assert m["queue_ms_mean"] == pytest.approx(25.0)  # successful requests: 0 and 50 ms


def test_goodput_and_attainment(cell):
    m = summarize(cell, Slo(ttft_ms=250, tpot_ms=50))
    # only the first request meets both; failures count in the attainment's denominator
    assert m["goodput"] == pytest.approx(1.0)
    assert m["slo_attainment"] == pytest.approx(0.25)
    assert summarize(cell, Slo(ttft_ms=300, tpot_ms=100))["goodput"] == pytest.approx(2.0)
    assert summarize(cell, Slo(e2el_ms=199))["goodput"] == 0.0


def test_concurrency_profile(cell):
    # window 10.0-10.3 (first to last send): 1 x 0.05 + 2 x 0.15 + 3 x 0.01 + 2 x 0.09 = 0.56
    observed, peak = concurrency_profile(cell)
    assert observed == pytest.approx(0.56 / 0.3)
    assert peak == 3


def test_token_count_without_usage_and_tpot_rules():
    no_usage = rec(0, 0, 1, first=0.5, itl=(0.1, 0.1))
    assert output_tokens(no_usage) == 3
    assert summarize([no_usage])["usage_missing"] == 1
    one = rec(0, 0, 1, first=0.5, n=1)
    assert tpot(one) is None  # n <= 1 has no TPOT ...
    assert summarize([one], Slo(tpot_ms=0.001))["goodput"] > 0  # ... and passes the TPOT SLO


def test_empty_cell_has_no_latencies():
    m = summarize([rec(0, 0, 1, outcome="error")])
    assert m["ttft_ms_p50"] is None and m["completed"] == 0 and m["output_throughput"] == 0.0


def test_agrees_with_vllm_calculate_metrics(cell):
    """Same records through vLLM's own code give the same numbers.

    vLLM is part of the dev install (`make install`), so this imports, never skips: a missing
    vLLM is a broken environment and fails here.
    """
    from vllm.benchmarks import serve
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput

    outs = []
    for r in cell:
        o = RequestFuncOutput(success=r.ok, prompt_len=r.prompt_tokens, start_time=r.start)
        if r.ok:
            o.ttft, o.latency, o.itl, o.output_tokens = r.ttft, r.e2el, list(r.itl), r.output_tokens
        outs.append(o)
    ours = summarize(cell, Slo(ttft_ms=250, tpot_ms=50))
    theirs, _ = serve.calculate_metrics(
        [], outs, ours["duration_s"], None, [50, 90, 99], {"ttft": 250, "tpot": 50}
    )
    assert ours["request_throughput"] == pytest.approx(theirs.request_throughput)
    assert ours["output_throughput"] == pytest.approx(theirs.output_throughput)
    assert ours["total_throughput"] == pytest.approx(theirs.total_token_throughput)
    assert ours["goodput"] == pytest.approx(theirs.request_goodput)
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert ours[f"{name}_ms_mean"] == pytest.approx(getattr(theirs, f"mean_{name}_ms"))
        for p, v in getattr(theirs, f"percentiles_{name}_ms"):
            assert ours[f"{name}_ms_p{int(p)}"] == pytest.approx(v)
