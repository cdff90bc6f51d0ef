"""The report's judgements: SLO pass, knee, peak, best interactive cell, cost, stalls."""

from __future__ import annotations

import pytest

from bench.analysis import Policy, best_interactive, cost_per_million, derive, knees, peak

POLICY = Policy(price_per_hour=4 * 2.70, price_source="test", chips=4)


def row(ctx, conc, tok_s, ttft_p50=10.0, attain=1.0, status="ok", **extra):
    base = {
        "context": ctx, "concurrency": conc, "status": status, "requests": 5 * conc,
        "output_throughput": tok_s, "total_throughput": 2 * tok_s, "ttft_ms_p50": ttft_p50,
        "slo_attainment": attain, "observed_concurrency": conc, "loop_lag_ms_p99": 1.0,
        "itl_ms_p99": 20.0, "itl_ms_max": 30.0,
    }  # fmt: skip
    return derive(base | extra, POLICY)


def test_cost_per_million_tokens():
    # 4 chips x 2.70 USD/h = 10.8 USD/h = 0.003 USD/s; at 1000 tok/s -> 3 USD per 1M tokens
    assert cost_per_million(1000.0, POLICY) == pytest.approx(3.0)
    assert cost_per_million(0.0, POLICY) is None
    r = row(128, 1, 1000.0)
    assert r["cost_per_1m_output_usd"] == pytest.approx(3.0)
    assert r["cost_per_1m_total_usd"] == pytest.approx(1.5)


def test_no_price_no_cost_figures():
    unpriced = Policy(chips=1)  # a CPU profile without PRICE_PER_HOUR_USD
    assert cost_per_million(1000.0, unpriced) is None
    r = derive({"context": 128, "concurrency": 1, "status": "ok", "output_throughput": 1000.0,
                "total_throughput": 2000.0}, unpriced)  # fmt: skip
    assert r["cost_per_1m_output_usd"] is None and r["cost_per_1m_total_usd"] is None


def test_slo_pass_needs_an_ok_cell_and_the_attainment():
    assert row(128, 1, 100.0, attain=0.99)["slo_pass"]
    assert not row(128, 1, 100.0, attain=0.98)["slo_pass"]
    assert not row(128, 1, 100.0, attain=1.0, status="failed")["slo_pass"]


def test_client_bound_and_compile_stall_flags():
    assert row(128, 8, 1.0, observed_concurrency=7.0)["client_bound"]  # < 95% of 8
    assert not row(128, 8, 1.0, observed_concurrency=7.9)["client_bound"]
    assert row(128, 8, 1.0, loop_lag_ms_p99=50.0)["client_bound"]
    assert row(128, 8, 1.0, itl_ms_p99=20.0, itl_ms_max=5000.0)["compile_stall"]
    assert not row(128, 8, 1.0, itl_ms_p99=20.0, itl_ms_max=150.0)["compile_stall"]  # < 10x
    assert not row(128, 8, 1.0, itl_ms_p99=1.0, itl_ms_max=50.0)["compile_stall"]  # < 100 ms


def test_peak_best_interactive_and_knee():
    rows = [
        row(128, 1, 100.0), row(128, 2, 190.0), row(128, 4, 350.0, attain=0.5),
        row(128, 8, 370.0, ttft_p50=900.0, attain=0.0),
        row(1024, 1, 80.0), row(1024, 2, 150.0),
        row(2048, 1, 0.0, status="skipped_max_len"),
    ]  # fmt: skip
    assert (peak(rows)["context"], peak(rows)["concurrency"]) == (128, 8)
    best = best_interactive(rows)
    assert (best["context"], best["concurrency"]) == (128, 2)
    k128, k1024 = knees(rows, gain=0.10)
    # 1->2 +90%, 2->4 +84%, 4->8 +5.7% < 10%: the knee is at 4
    assert (k128.concurrency, k128.next_concurrency, k128.next_ttft_p50_ms) == (4, 8, 900.0)
    assert k1024.concurrency is None and k1024.max_tested == 2  # still climbing


def test_nothing_measured():
    rows = [row(2048, 1, 0.0, status="skipped_max_len")]
    assert peak(rows) is None and best_interactive(rows) is None and knees(rows, 0.1) == []
