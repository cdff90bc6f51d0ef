"""Engine instance identity from /metrics text (shared with the warm-up sidecar)."""

from __future__ import annotations

from protocol.identity import engine_instance

PAGE = """# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.79560425903e+09
process_start_time_seconds_other 5
vllm:num_requests_running{engine="0",model_name="m"} 0.0
"""


def test_reads_process_start_time() -> None:
    assert engine_instance(PAGE) == repr(1.79560425903e09)


def test_normalises_number_format() -> None:
    a = engine_instance("process_start_time_seconds 1795604259.03\n")
    b = engine_instance("process_start_time_seconds 1.79560425903e+09\n")
    assert a == b


def test_missing_or_garbled_is_none() -> None:
    assert engine_instance("vllm:num_requests_running 0\n") is None
    assert engine_instance("process_start_time_seconds abc\n") is None
    assert engine_instance("") is None


def test_a_restart_changes_it() -> None:
    assert engine_instance(PAGE) != engine_instance(PAGE.replace("25903", "26000"))
