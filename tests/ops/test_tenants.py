"""get_tenant_usage's figures from two gateway scrapes (ops/tenants.py)."""

from __future__ import annotations

from ops.tenants import tenant_usage
from protocol.prometheus import Scrape

PAGE = """# TYPE gateway_key_requests counter
gateway_key_requests_total{key="a",class="interactive"} {ra}
gateway_key_requests_total{key="b",class="batch"} 4
# TYPE gateway_key_tokens counter
gateway_key_tokens_total{key="a",kind="prompt"} 1000
gateway_key_tokens_total{key="a",kind="completion"} 10
gateway_key_tokens_total{key="a",kind="cached"} 200
gateway_key_tokens_total{key="b",kind="prompt"} 40
gateway_key_tokens_total{key="b",kind="completion"} 900
# TYPE gateway_key_chip_seconds counter
gateway_key_chip_seconds_total{key="a",phase="prefill"} {pa}
gateway_key_chip_seconds_total{key="a",phase="decode"} 0.5
gateway_key_chip_seconds_total{key="b",phase="decode"} 6.0
# TYPE gateway_replica_busy_seconds counter
gateway_replica_busy_seconds_total{replica="r1"} {busy}
"""
COST = """# TYPE gateway_key_chip_cost_usd counter
gateway_key_chip_cost_usd_total{key="a"} 0.003
gateway_key_chip_cost_usd_total{key="b"} 0.0045
"""


def page(ra: float, pa: float, busy: float, cost: bool = False) -> Scrape:
    text = PAGE.replace("{ra}", str(ra)).replace("{pa}", str(pa)).replace("{busy}", str(busy))
    return Scrape.parse(text + (COST if cost else ""))


def test_whole_run_per_key_sorted_by_chip_time() -> None:
    out = tenant_usage(page(3, 1.5, 8.0), None)
    a, b = sorted(out["keys"], key=lambda r: r["key"])
    assert out["keys"][0] is b and b["chip_seconds"] == 6.0  # most chip-seconds first
    assert (a["requests"], a["prompt_tokens"], a["cached_tokens"]) == (3, 1000, 200)
    assert (a["chip_seconds"], a["chip_seconds_prefill"], a["chip_seconds_decode"]) == (
        2.0,
        1.5,
        0.5,
    )
    assert out["engine_busy_seconds"] == 8.0
    assert not out["priced"] and a["cost_usd"] is None and "PRICE_PER_HOUR_USD" in out["price_note"]


def test_a_window_is_the_difference_and_cost_shows_with_a_price() -> None:
    out = tenant_usage(page(5, 2.5, 10.0, cost=True), page(3, 1.5, 8.0, cost=True))
    a = next(r for r in out["keys"] if r["key"] == "a")
    assert a["requests"] == 2 and a["chip_seconds_prefill"] == 1.0 and a["prompt_tokens"] == 0
    assert out["engine_busy_seconds"] == 2.0 and out["priced"] and a["cost_usd"] == 0.0
