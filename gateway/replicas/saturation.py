"""Engine saturation from its own ``/metrics``: is the engine's queue or KV cache too full?

The gateway's in-flight cap alone cannot see the engine's side: preemption, long prompts or a
second client talking to the engine directly can fill its queue while the gateway still has
slots. So the gateway also reads ``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc``
and holds admissions while either is above its threshold. A sample older than
``max_age_s`` counts as saturated: when the engine cannot even answer ``/metrics`` in time, it
is not the moment to send it more work (fail closed, like llm-d's endpoint picker).

Pure: parsing and the decision; polling lives in ``monitor.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.identity import engine_instance
from protocol.prometheus import values as _values

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
# The chip-time ledger's inputs (gateway/ledger/): per-token phase costs from vLLM's own
# histograms and counters (vllm/v1/metrics/loggers.py).
PREFILL_S = "vllm:request_prefill_time_seconds_sum"
PREFILL_TOKENS = "vllm:request_prefill_kv_computed_tokens_sum"  # cached prompt tokens excluded
DECODE_S = "vllm:request_decode_time_seconds_sum"
DECODE_TOKENS = "vllm:generation_tokens_total"


@dataclass(frozen=True)
class EngineSample:
    at: float  # monotonic time the sample was taken
    waiting: float
    running: float
    kv_usage: float
    instance: str | None
    prefill_s: float = 0.0  # cumulative, for the ledger
    prefill_tokens: float = 0.0
    decode_s: float = 0.0
    decode_tokens: float = 0.0


def parse_engine_metrics(text: str, at: float) -> EngineSample:
    """Sum waiting/running over engines (data-parallel ranks); KV usage is the worst rank."""
    kv = _values(text, KV_USAGE)
    return EngineSample(
        at=at,
        waiting=sum(_values(text, WAITING)),
        running=sum(_values(text, RUNNING)),
        kv_usage=max(kv) if kv else 0.0,
        instance=engine_instance(text),
        prefill_s=sum(_values(text, PREFILL_S)),
        prefill_tokens=sum(_values(text, PREFILL_TOKENS)),
        decode_s=sum(_values(text, DECODE_S)),
        decode_tokens=sum(_values(text, DECODE_TOKENS)),
    )


@dataclass(frozen=True)
class SaturationPolicy:
    waiting_threshold: int
    kv_usage_threshold: float
    max_age_s: float

    def reason(self, sample: EngineSample | None, now: float) -> str | None:
        """Why the engine counts as saturated now, or None when it can take more work."""
        if sample is None:
            return "no_metrics"
        if now - sample.at > self.max_age_s:
            return "stale_metrics"
        if sample.waiting > self.waiting_threshold:
            return "engine_queue"
        if sample.kv_usage > self.kv_usage_threshold:
            return "kv_cache"
        return None

    def pressured(self, sample: EngineSample | None, now: float) -> bool:
        """Half way to saturation (the engine's queue above half its threshold, or its KV cache
        within 10 points of it): admission then holds the lower priority classes (batch) while
        the top class (interactive) still goes upstream, so batch is held first under load."""
        if self.reason(sample, now) is not None:
            return True
        assert sample is not None
        return (
            sample.waiting > self.waiting_threshold / 2
            or sample.kv_usage > self.kv_usage_threshold - 0.10
        )
