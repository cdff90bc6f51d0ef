"""Engine saturation from its /metrics text; stale samples fail closed."""

from __future__ import annotations

from gateway.replicas.saturation import SaturationPolicy, parse_engine_metrics

PAGE = """# HELP vllm:num_requests_waiting Number of requests waiting.
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.97
process_start_time_seconds 1.7e+09
"""

POLICY = SaturationPolicy(waiting_threshold=4, kv_usage_threshold=0.95, max_age_s=2.0)


def test_parse_sums_ranks_and_ignores_lookalike_metrics() -> None:
    s = parse_engine_metrics(PAGE, at=10.0)
    assert (s.running, s.waiting, s.kv_usage) == (5.0, 7.0, 0.97)
    assert s.instance == repr(1.7e9)


def test_reasons() -> None:
    idle = parse_engine_metrics(
        'vllm:num_requests_waiting{engine="0"} 1\nvllm:kv_cache_usage_perc{engine="0"} 0.2\n', 10.0
    )
    assert POLICY.reason(idle, now=11.0) is None
    assert POLICY.reason(idle, now=12.5) == "stale_metrics"
    assert POLICY.reason(None, now=0.0) == "no_metrics"
    busy = parse_engine_metrics(PAGE, at=10.0)
    assert POLICY.reason(busy, now=10.1) == "engine_queue"
    kv_only = parse_engine_metrics(PAGE.replace("} 7.0", "} 0.0"), at=10.0)
    assert POLICY.reason(kv_only, now=10.1) == "kv_cache"
