"""The engine monitor's reading of /health and /metrics (a scripted upstream, no sockets).

What matters: a slow /metrics under load is saturation, not "engine down" (which would turn
every request into a 503); a refused /health is down at once, a late one only when it persists; and an engine that comes back is
not served under the previous instance's warm-up before /metrics has said which process it is.
"""

from __future__ import annotations

import httpx
import pytest

from gateway.replicas.health import HealthTracker
from gateway.replicas.monitor import SLOW_HEALTH_POLLS, EngineMonitor
from gateway.replicas.saturation import SaturationPolicy

pytestmark = pytest.mark.anyio


class Engine:
    """Scripted answers: ``health`` status (None: refused), ``metrics`` behaviour, instance."""

    def __init__(self) -> None:
        self.health: int | None = 200
        self.metrics = "ok"  # ok | timeout | refused
        self.start_time = 1000.0
        self.waiting = 0

    async def call(self, method: str, path: str, timeout: float) -> tuple[int, bytes]:
        """``EnginePool.call``'s contract: (status, body), or httpx's exception types."""
        assert method == "GET" and timeout > 0
        if path == "/health":
            if self.health is None:
                raise httpx.ConnectError("refused")
            if self.health == -1:
                raise httpx.ReadTimeout("late")
            return self.health, b""
        assert path == "/metrics"
        if self.metrics == "refused":
            raise httpx.ConnectError("refused")
        if self.metrics == "timeout":
            raise httpx.ReadTimeout("slow")
        text = (
            f"process_start_time_seconds {self.start_time}\n"
            f'vllm:num_requests_waiting{{engine="0"}} {self.waiting}\n'
            'vllm:kv_cache_usage_perc{engine="0"} 0.1\n'
        )
        return 200, text.encode()


class Changes:
    """Counts ``on_change`` calls (the replica set recomputes admission on each)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


def monitor(engine: Engine, warm: object = None) -> tuple[EngineMonitor, HealthTracker, Changes]:
    health = HealthTracker()
    changes = Changes()
    policy = SaturationPolicy(waiting_threshold=2, kv_usage_threshold=0.9, max_age_s=60)
    mon = EngineMonitor(engine, health, policy, 0.25, 1.0, changes, warm)  # type: ignore[arg-type]
    return mon, health, changes


async def test_up_needs_health_and_a_metrics_sample() -> None:
    engine = Engine()
    mon, health, changes = monitor(engine)
    await mon.poll_health()
    assert health.snapshot().state == "engine_down"  # no instance known yet
    seen = changes.n
    await mon.poll_metrics()
    snap = health.snapshot()
    assert (snap.state, snap.engine_instance) == ("warming_up", "1000.0")
    assert not mon.saturated
    assert changes.n > seen  # the replica set heard of the new state


async def test_slow_metrics_is_not_engine_down() -> None:
    engine = Engine()
    mon, health, _ = monitor(engine)
    await mon.poll_metrics()
    await mon.poll_health()
    engine.metrics = "timeout"
    await mon.poll_metrics()
    assert health.snapshot().state == "warming_up"


async def test_engine_queue_saturates_the_replica() -> None:
    engine = Engine()
    mon, _, changes = monitor(engine)
    engine.waiting = 5
    await mon.poll_metrics()
    assert mon.saturated and mon.saturation_reason == "engine_queue"
    engine.waiting = 0
    seen = changes.n
    await mon.poll_metrics()
    assert not mon.saturated and changes.n == seen + 1


async def test_refused_metrics_pokes_the_health_check() -> None:
    engine = Engine()
    mon, _, _ = monitor(engine)
    engine.metrics = "refused"
    await mon.poll_metrics()
    assert mon._poke.is_set()


async def test_restart_is_not_served_under_the_old_warm_up() -> None:
    engine = Engine()
    mon, health, _ = monitor(engine)
    await mon.poll_metrics()
    await mon.poll_health()
    health.report_warmup("1000.0", "passed", None, None)
    assert health.snapshot().ready

    engine.health = None  # killed
    await mon.poll_health()
    assert health.snapshot().state == "engine_down"

    engine.health, engine.start_time = 200, 2000.0  # a new process on the same port
    await mon.poll_health()
    assert health.snapshot().state == "engine_down"  # which process? not known yet
    await mon.poll_metrics()
    snap = health.snapshot()
    assert (snap.state, snap.engine_instance) == ("warming_up", "2000.0")


async def test_late_health_answers_are_down_only_when_they_persist() -> None:
    engine = Engine()
    mon, health, _ = monitor(engine)
    await mon.poll_metrics()
    await mon.poll_health()
    health.report_warmup("1000.0", "passed", None, None)
    engine.health = -1  # answers too late
    for _ in range(SLOW_HEALTH_POLLS - 1):
        await mon.poll_health()
        assert health.snapshot().ready  # a busy engine is not a dead one
    engine.health = 200
    await mon.poll_health()  # one answer in time resets the count
    engine.health = -1
    for _ in range(SLOW_HEALTH_POLLS - 1):
        await mon.poll_health()
    assert health.snapshot().ready
    await mon.poll_health()
    assert health.snapshot().state == "engine_down"


async def test_mark_down_stops_routing_until_the_health_check_says_otherwise() -> None:
    engine = Engine()
    mon, health, _ = monitor(engine)
    await mon.poll_metrics()
    await mon.poll_health()
    health.report_warmup("1000.0", "passed", None, None)
    mon.mark_down()  # the proxy saw a refused connection
    assert health.snapshot().state == "engine_down" and mon._poke.is_set()
    await mon.poll_health()  # it answers again: same process, so its warm-up still counts
    await mon.poll_metrics()
    assert health.snapshot().ready


async def test_pulled_warm_status_applies_to_the_instance_it_names() -> None:
    engine = Engine()
    answers: list[dict[str, object] | None] = [{"state": "running", "engine_instance": "1000.0"}]

    async def warm() -> dict[str, object] | None:
        return answers[-1]

    mon, health, _ = monitor(engine, warm)
    await mon.poll_metrics()
    await mon.poll_health()
    assert health.snapshot().state == "warming_up"
    answers.append({"state": "passed", "engine_instance": "999.0"})  # another process's result
    await mon.poll_health()
    assert health.snapshot().state == "warming_up"
    answers.append(None)  # sidecar unreachable: nothing changes
    await mon.poll_health()
    assert health.snapshot().state == "warming_up"
    answers.append({"state": "passed", "engine_instance": "1000.0"})
    await mon.poll_health()
    assert health.snapshot().ready
    answers.append({"state": "failed", "engine_instance": "1000.0", "step": "chat"})
    await mon.poll_health()
    assert health.snapshot().status_text == "warmup_failed: chat"


async def test_half_way_to_saturation_is_pressure_not_saturation() -> None:
    engine = Engine()
    mon, _, _ = monitor(engine)
    engine.waiting = 2  # threshold 2: above half of it, not above it
    await mon.poll_metrics()
    assert mon.pressured and not mon.saturated
    engine.waiting = 0
    await mon.poll_metrics()
    assert not mon.pressured and not mon.saturated
