"""The chip-time ledger's model (gateway/ledger/core.py), exactly, with made-up samples."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gateway.ledger import Ledger
from gateway.ledger.core import EngineCounters, ReplicaLedger, Work


def s(at: float, running: float, **kw: float) -> EngineCounters:
    return EngineCounters(at, running, **kw)


def test_busy_time_is_the_trapezoid_of_running() -> None:
    r = ReplicaLedger()
    assert r.observe(s(0.0, 0)) == 0.0
    assert r.observe(s(1.0, 2)) == pytest.approx(0.5)  # idle -> busy: half the gap
    assert r.observe(s(2.0, 1)) == pytest.approx(1.0)
    assert r.observe(s(3.0, 0)) == pytest.approx(0.5)
    assert r.observe(s(4.0, 0)) == 0.0
    assert r.busy_total_s == pytest.approx(2.0)


def test_split_by_weighted_work_with_cached_tokens_credited() -> None:
    r = ReplicaLedger()
    r.observe(s(0.0, 0, prefill_s=0, prefill_tokens=0, decode_s=0, decode_tokens=0))
    # over the period: 1000 prefill tokens took 1 s, 100 decode tokens took 4 s of request time
    r.observe(s(10.0, 1, prefill_s=1.0, prefill_tokens=1000, decode_s=4.0, decode_tokens=100))
    r.observe(s(11.0, 0, prefill_s=1.0, prefill_tokens=1000, decode_s=4.0, decode_tokens=100))
    assert r.phase_costs() == pytest.approx((0.001, 0.04))
    r.finished(Work("a", prefill_tokens=1000, decode_tokens=0))  # 1.0 weighted
    r.finished(Work("b", prefill_tokens=0, decode_tokens=75))  # 3.0 weighted
    out = r.settle()
    busy = 10 * 0.5 + 1 * 0.5
    assert sum(out.values()) == pytest.approx(busy)
    assert out["a", "prefill"] == pytest.approx(busy * 0.25)
    assert out["b", "decode"] == pytest.approx(busy * 0.75)
    assert ("a", "decode") not in out and r.pending_s == 0 and not r.work


def test_busy_time_without_finished_work_is_carried() -> None:
    r = ReplicaLedger()
    r.observe(s(0.0, 1))
    r.observe(s(2.0, 1))
    assert r.settle() == {} and r.pending_s == pytest.approx(2.0)
    r.finished(Work("a", 10, 10))
    r.observe(s(3.0, 0))
    assert sum(r.settle().values()) == pytest.approx(2.5)


COSTS = {"prefill_s": 1.0, "prefill_tokens": 100, "decode_s": 1.0, "decode_tokens": 10}


def test_settles_when_idle_or_every_interval() -> None:
    r = ReplicaLedger()
    r.observe(s(0.0, 1))
    r.observe(s(0.5, 1, **COSTS))
    assert not r.due(100.0, 10.0, 0.0)  # nothing finished
    r.finished(Work("a", 1, 1))
    assert r.due(100.0, 10.0, 95.0) is False and r.due(100.0, 10.0, 90.0)
    r.observe(s(1.0, 0, **COSTS))
    assert r.due(100.0, 10.0, 99.0)  # idle: every busy second so far is finished work's


def test_waits_for_the_phase_costs() -> None:
    r = ReplicaLedger()
    r.observe(s(0.0, 1))
    r.finished(Work("a", 1, 1))
    r.observe(s(1.0, 0))  # idle, but no phase has a measured cost yet
    assert not r.due(30.0, 10.0, 0.0) and r.due(61.0, 10.0, 0.0)


def test_an_engine_restart_resets_the_phase_baseline() -> None:
    r = ReplicaLedger()
    r.observe(s(0.0, 0, prefill_s=5, prefill_tokens=500, decode_s=5, decode_tokens=50))
    r.observe(s(1.0, 0, prefill_s=0.1, prefill_tokens=10, decode_s=0.1, decode_tokens=1))
    assert r.base is not None and r.base.prefill_tokens == 10


def test_ledger_exports_chip_seconds_and_cost() -> None:
    reg = CollectorRegistry()
    now = [0.0]
    ledger = Ledger(reg, chips_each=4, price_per_chip_s=2.70 / 3600, clock=lambda: now[0])
    ledger.observe("r1", s(0.0, 0))
    ledger.observe("r1", s(1.0, 1))
    ledger.finished("r1", "team-a", prompt=100, cached=60, completion=0)
    now[0] = 2.0
    ledger.observe("r1", s(2.0, 0, **COSTS))  # idle, costs known: settled
    chip_s = reg.get_sample_value(
        "gateway_key_chip_seconds_total", {"key": "team-a", "phase": "prefill"}
    )
    assert chip_s == pytest.approx(1.0 * 4)  # 1 busy second x 4 chips
    cost = reg.get_sample_value("gateway_key_chip_cost_usd_total", {"key": "team-a"})
    assert cost == pytest.approx(4 * 2.70 / 3600)
    assert reg.get_sample_value("gateway_replica_busy_seconds_total", {"replica": "r1"}) == 1.0
    u = ledger.keys["team-a"]
    assert (u.requests, u.prefill_tokens, u.cached_tokens) == (1, 40, 60)


def test_no_price_no_cost_series() -> None:
    reg = CollectorRegistry()
    Ledger(reg, chips_each=1, price_per_chip_s=None)
    assert "gateway_key_chip_cost_usd" not in {m.name for m in reg.collect()}


class _Sampled:
    def __init__(self, name: str, sample: EngineCounters) -> None:
        self.name, self.sample = name, sample


def test_a_gateway_that_does_not_keep_the_fleet_ledger_sends_its_work_and_measures_nothing() -> (
    None
):
    reg = CollectorRegistry()
    sent: list[tuple[str, Work]] = []
    ledger = Ledger(reg, chips_each=1, price_per_chip_s=None)
    ledger.remote = lambda replica, work: sent.append((replica, work))
    ledger.lead(False)
    ledger.finished("r1", "team-a", prompt=100, cached=60, completion=5)
    assert sent == [("r1", Work("team-a", 40, 5))] and not ledger.replicas
    ledger.poll([_Sampled("r1", s(1.0, 1))])
    assert not ledger.replicas  # no busy time measured: the leader measures it
    assert reg.get_sample_value("gateway_replica_busy_seconds_total", {"replica": "r1"}) is None


def test_the_leader_charges_the_fleets_work_and_hands_it_on_when_it_stops_leading() -> None:
    now = [0.0]
    reg = CollectorRegistry()
    sent: list[tuple[str, Work]] = []
    ledger = Ledger(reg, chips_each=1, price_per_chip_s=None, clock=lambda: now[0])
    ledger.remote = lambda replica, work: sent.append((replica, work))
    ledger.lead(False)
    ledger.lead(True)
    ledger.observe("r1", s(0.0, 1))
    ledger.record("r1", Work("team-b", 10, 10))  # finished by another gateway
    now[0] = 1.0
    ledger.observe("r1", s(1.0, 0, **COSTS))
    charged = sum(
        reg.get_sample_value("gateway_key_chip_seconds_total", {"key": "team-b", "phase": p}) or 0.0
        for p in ("prefill", "decode")
    )
    assert charged == pytest.approx(0.5)
    ledger.observe("r1", s(2.0, 1, **COSTS))
    ledger.record("r1", Work("team-c", 1, 1))  # not settled yet when the leadership goes
    ledger.lead(False)
    assert sent == [("r1", Work("team-c", 1, 1))] and not ledger.replicas
