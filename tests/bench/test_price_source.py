"""One price for benchmarks and ``ops estimate_cost``: the profile's, or the flag; none: no
cost figures, and the report says where the price came from."""

from __future__ import annotations

from bench.analysis import Policy
from bench.cli import _price
from bench.report import markdown


def test_the_cpu_profile_has_no_price() -> None:
    price, source = _price(None, "cpu")
    assert price is None
    assert "cpu.env sets no PRICE_PER_HOUR_USD" in source


def test_a_tpu_profile_prices_its_chips() -> None:
    assert _price(None, "v6e1-gemma4-e4b") == (2.70, "v6e1-gemma4-e4b.env: PRICE_PER_HOUR_USD")


def test_the_flag_wins() -> None:
    assert _price(5.0, "cpu") == (5.0, "--price-per-hour")


def _report(policy: Policy) -> str:
    rows = [{"context": 128, "concurrency": 1, "status": "ok", "output_throughput": 400.0,
             "total_throughput": 800.0, "cost_per_1m_output_usd": None}]  # fmt: skip
    return markdown({"model": "m"}, rows, policy)


def test_the_report_says_which() -> None:
    text = _report(Policy(price_source="cpu.env sets no PRICE_PER_HOUR_USD"))
    assert "| price | none (cpu.env sets no PRICE_PER_HOUR_USD): no cost figures |" in text
    assert "No price, so no cost figures" in text and "2.7" not in text
    priced = _report(Policy(price_per_hour=10.8, price_source="--price-per-hour", chips=4))
    assert "10.8 USD per hour for the deployment (4 chips), from --price-per-hour" in priced
