"""The replica set without engines: aggregate state, admission's cap, warm-up reports, drain,
DNS discovery (an injected resolver). Monitors are not started: each replica's state is driven
through its ``HealthTracker`` and ``EngineMonitor`` the way their polls would."""

from __future__ import annotations

import pytest

from env.replicas import Upstream
from gateway.admission.core import Admission
from gateway.replicas.core import ReplicaNotFound, ReplicaOptions, ReplicaSet
from gateway.replicas.health import StaleInstance
from gateway.replicas.saturation import SaturationPolicy
from gateway.routing import Request, build_scheduler

pytestmark = pytest.mark.anyio

OPTIONS = ReplicaOptions(
    cap=4, connect_timeout_s=1.0, saturation=SaturationPolicy(4, 0.95, 2.0),
    metrics_poll_s=0.25, health_poll_s=1.0,
)  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(n: int = 2, min_ready: int = 1, **kw: object) -> tuple[ReplicaSet, Admission]:
    adm = Admission(1, 8, 10.0)
    ups = [Upstream(f"http://127.0.0.1:{9000 + i}") for i in range(n)]
    rs = ReplicaSet(ups, OPTIONS, adm, build_scheduler("least_loaded"), min_ready, **kw)  # type: ignore[arg-type]
    return rs, adm


def up(rs: ReplicaSet, i: int, instance: str, warm: bool = True, saturated: bool = False) -> None:
    r = rs.replicas[i]
    r.monitor.saturated = saturated
    r.health.observe_engine(True, instance)
    rs._changed()  # what the monitor's on_change does
    if warm:
        rs.report_warmup(instance, "passed", None, None)


async def test_health_needs_min_ready_and_serving_needs_one() -> None:
    rs, adm = make(2, min_ready=2)
    assert rs.health().state == "engine_down" and not rs.serving().ready
    up(rs, 0, "i0", warm=False)
    assert rs.health().state == "warming_up"  # the most hopeful replica's state
    rs.report_warmup("i0", "passed", None, None)
    assert rs.serving().ready and not rs.health().ready  # 1 of the 2 required
    assert adm.max_inflight == 4
    up(rs, 1, "i1")
    assert rs.health().ready and adm.max_inflight == 8  # the routable replicas' caps summed
    listing = rs.describe()
    assert listing["ready"] == 2 and [r["state"] for r in listing["replicas"]] == ["ready"] * 2  # type: ignore[index]
    await rs.stop()


async def test_a_warm_up_report_goes_to_the_replica_running_its_instance() -> None:
    rs, _ = make(2)
    up(rs, 0, "i0", warm=False)
    up(rs, 1, "i1", warm=False)
    rs.report_warmup("i1", "failed", "chat", "boom")
    assert [r.health.snapshot().state for r in rs.replicas] == ["warming_up", "warmup_failed"]
    with pytest.raises(StaleInstance):
        rs.report_warmup("gone", "passed", None, None)
    assert rs.instance_state("i1").step == "chat"  # type: ignore[union-attr]
    await rs.stop()


async def test_two_replicas_sharing_an_instance_are_named_in_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The instance is the API server's start time (10 ms resolution): two engines started in
    the same tick on one host share it (a CI run's resume test). A report cannot tell them
    apart: it goes to the first, and the operator is told once which replicas collide."""
    rs, _ = make(2)
    up(rs, 0, "same", warm=False)
    up(rs, 1, "same", warm=False)
    with caplog.at_level("WARNING", logger="gateway.replicas"):
        rs.report_warmup("same", "passed", None, None)
        rs.report_warmup("same", "passed", None, None)
    warned = [r.getMessage() for r in caplog.records if "same engine instance" in r.getMessage()]
    assert len(warned) == 1 and "127.0.0.1:9000, 127.0.0.1:9001" in warned[0], warned
    assert [r.health.snapshot().state for r in rs.replicas] == ["ready", "warming_up"]
    await rs.stop()


async def test_a_restarted_replica_is_not_served_until_warmed_again() -> None:
    rs, adm = make(2)
    up(rs, 0, "i0")
    up(rs, 1, "i1")
    up(rs, 1, "i1-new", warm=False)  # same replica, new process
    assert [r.routable for r in rs.replicas] == [True, False] and adm.max_inflight == 4
    assert all(rs.pick(Request.keyed(b"k")) is rs.replicas[0] for _ in range(5))
    await rs.stop()


async def test_drain_takes_a_replica_out_of_rotation_and_back() -> None:
    rs, adm = make(2)
    up(rs, 0, "i0")
    up(rs, 1, "i1")
    name = rs.replicas[1].name
    rs.set_draining(name, True)
    assert adm.max_inflight == 4 and all(
        rs.pick(Request.keyed(b"k")) is rs.replicas[0] for _ in range(5)
    )
    assert rs.health().ready  # still ready: draining is planned, not a failure
    rs.set_draining(name, False)
    assert adm.max_inflight == 8
    with pytest.raises(ReplicaNotFound):
        rs.set_draining("nope:1", True)
    await rs.stop()


async def test_the_gateway_drain_stops_serving_and_says_so() -> None:
    rs, _ = make(1)
    up(rs, 0, "i0")
    rs.begin_drain()
    assert rs.serving().state == "draining" and rs.health().state == "draining"
    await rs.stop()


async def test_admission_holds_only_when_every_routable_replica_is_saturated() -> None:
    rs, adm = make(2)
    up(rs, 0, "i0", saturated=True)
    up(rs, 1, "i1")
    assert not adm.saturated
    rs.replicas[1].monitor.saturated = True
    rs._changed()
    assert adm.saturated
    await rs.stop()


async def test_dns_discovery_follows_the_answer() -> None:
    answers = [["10.0.0.1", "10.0.0.2"], ["10.0.0.2", "10.0.0.3"], OSError("no such name")]

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("engine.ns", 8000)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    rs, _ = make(0, dns=("http", "engine.ns", 8000), resolver=resolver)
    assert rs.health().state == "engine_down"
    await rs.refresh_dns()
    assert [r.name for r in rs.replicas] == ["10.0.0.1:8000", "10.0.0.2:8000"]
    kept = rs.replicas[1]
    await rs.refresh_dns()
    assert [r.name for r in rs.replicas] == ["10.0.0.2:8000", "10.0.0.3:8000"]
    assert rs.replicas[0] is kept  # unchanged replicas keep their state and connections
    await rs.refresh_dns()  # resolution failed: keep what we have
    assert len(rs.replicas) == 2
    await rs.stop()


async def test_a_replica_that_left_is_closed_only_after_its_last_request() -> None:
    answers = [["10.0.0.1"], []]

    async def resolver(host: str, port: int) -> list[str]:
        return answers.pop(0)

    rs, _ = make(0, dns=("http", "e", 8000), resolver=resolver)
    await rs.refresh_dns()
    leaving = rs.replicas[0]
    lease = leaving.lease()
    lease.__enter__()
    await rs.refresh_dns()
    assert rs.replicas == [] and not leaving.control.is_closed  # its request still runs
    lease.__exit__(None, None, None)
    await rs._close_retired()
    assert leaving.control.is_closed
    await rs.stop()


async def test_the_set_and_its_replicas_share_one_clock() -> None:
    """``since`` of every snapshot, aggregated or per replica, comes from the injected clock
    (a mix with the wall clock made a fake clock's times meaningless, as in deploy.dev)."""
    now = [5000.0]
    rs, _ = make(2, clock=lambda: now[0])
    assert rs.health().since == 5000.0  # engine_down since the set was built
    now[0] = 5010.0
    up(rs, 0, "i0")
    assert rs.replicas[0].health.snapshot().since == 5010.0
    assert rs.health().state == "ready" and rs.health().since == 5010.0
    now[0] = 5020.0
    rs._changed()
    assert rs.health().since == 5010.0  # still ready: the transition's time is kept
    await rs.stop()
