"""The serving-state machine: engine liveness x warm-up report for the current instance."""

from __future__ import annotations

import pytest

from gateway.replicas.health import HealthTracker, StaleInstance


def test_starts_down_then_warming_for_a_new_instance() -> None:
    h = HealthTracker()
    assert h.snapshot().state == "engine_down"
    snap = h.observe_engine(True, "111.0")
    assert (snap.state, snap.engine_instance) == ("warming_up", "111.0")
    assert not snap.ready and snap.status_text == "warming_up"


def test_passed_makes_it_ready_and_restart_resets() -> None:
    h = HealthTracker()
    h.observe_engine(True, "111.0")
    assert h.report_warmup("111.0", "passed", None, None).ready
    assert h.observe_engine(True, "111.0").ready  # same process: stays ready
    snap = h.observe_engine(True, "222.0")  # restarted engine: a new process, cold
    assert snap.state == "warming_up" and snap.engine_instance == "222.0"


def test_engine_down_and_back_with_the_same_instance_keeps_the_warm_up() -> None:
    h = HealthTracker()
    h.observe_engine(True, "111.0")
    h.report_warmup("111.0", "passed", None, None)
    assert h.observe_engine(False, "111.0").state == "engine_down"
    assert h.observe_engine(True, "111.0").ready  # a blip, not a restart


def test_failed_names_the_step() -> None:
    h = HealthTracker()
    h.observe_engine(True, "1.0")
    snap = h.report_warmup("1.0", "failed", "tool_call", "parser returned nothing")
    assert snap.state == "warmup_failed"
    assert snap.status_text == "warmup_failed: tool_call"
    assert snap.detail == "parser returned nothing"


def test_stale_report_is_refused() -> None:
    h = HealthTracker()
    h.observe_engine(True, "2.0")
    with pytest.raises(StaleInstance):
        h.report_warmup("1.0", "passed", None, None)
    assert h.snapshot().state == "warming_up"


def test_report_while_no_engine_seen_is_stale() -> None:
    with pytest.raises(StaleInstance):
        HealthTracker().report_warmup("1.0", "passed", None, None)


def test_since_moves_only_on_change_and_listeners_hear_changes() -> None:
    t = [100.0]
    h = HealthTracker(clock=lambda: t[0])
    seen: list[str] = []
    h.subscribe(lambda s: seen.append(s.state))
    t[0] = 101.0
    h.observe_engine(True, "1.0")
    t[0] = 102.0
    h.observe_engine(True, "1.0")
    assert h.snapshot().since == 101.0
    assert seen == ["engine_down", "warming_up"]
