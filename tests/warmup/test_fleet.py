"""warmup/fleet.py: several replicas, each warmed and reported on its own (no vLLM).

The engines are synthetic upstreams (``python -m bench synthetic``: real /health, /v1/models,
/metrics with a start time, /tokenize, chat), one process each, so each has its own instance;
the gateway is ``FakeReplicaGateway`` (accepts a report for any instance it sees). The watch
test restarts one engine on its port (a new instance) and checks only that one is warmed again,
through the status server's /ready with ``--no-notify`` (the Kubernetes shape).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.overhead import synthetic_upstream
from env.replicas import UpstreamError
from env.settings import EngineSettings, GatewaySettings, WarmupSettings
from protocol.identity import engine_instance
from tests.support.process import REPO, free_port
from tests.warmup.fakes import FakeReplicaGateway, serve, synthetic_engine
from tests.warmup.test_handshake import SYNTHETIC_PROFILE
from warmup.fleet import Target, report_path_for, targets, use_rich, worst
from warmup.sidecar import Outcome

# --- which replicas -----------------------------------------------------------------------------


def test_engine_replicas_are_this_hosts_ports_with_their_index() -> None:
    found = targets(EngineSettings(replicas=3, port=9000), GatewaySettings(), WarmupSettings())
    assert found == [
        Target("127.0.0.1:9000", "http://127.0.0.1:9000", 0),
        Target("127.0.0.1:9001", "http://127.0.0.1:9001", 1),
        Target("127.0.0.1:9002", "http://127.0.0.1:9002", 2),
    ]


def test_one_engine_is_warmed_as_before() -> None:
    engine = EngineSettings(port=9000)
    [one] = targets(engine, GatewaySettings(), WarmupSettings())
    assert one.url == engine.url and one.index is None, "no --replica for a single engine"


def test_the_gateway_upstream_list_and_the_warmup_override() -> None:
    gw = GatewaySettings(upstream_urls="http://10.0.0.5:8000, http://10.0.0.6:8000")
    found = targets(EngineSettings(replicas=2), gw, WarmupSettings())
    assert [(t.name, t.index) for t in found] == [("10.0.0.5:8000", None), ("10.0.0.6:8000", None)]
    # compose hands this host's replicas over as a list: still indexed for the cache save
    local = GatewaySettings(upstream_urls="http://127.0.0.1:8000,http://127.0.0.1:8001")
    found = targets(EngineSettings(replicas=2, port=8000), local, WarmupSettings())
    assert [t.index for t in found] == [0, 1]
    override = WarmupSettings(engine_url="http://127.0.0.1:7000/")
    assert targets(EngineSettings(replicas=4), gw, override) == [
        Target("127.0.0.1:7000", "http://127.0.0.1:7000")
    ]


def test_a_bad_list_is_refused_with_one_line_per_problem() -> None:
    bad = WarmupSettings(engine_url="http://a:1,ftp://b:2,http://a:1,http://c")
    with pytest.raises(UpstreamError) as err:
        targets(EngineSettings(), GatewaySettings(), bad)
    assert err.value.problems == [
        "WARMUP_ENGINE_URL: 'ftp://b:2' must start with http:// or https://",
        "WARMUP_ENGINE_URL: replica a:1 is listed twice",
        "WARMUP_ENGINE_URL: 'http://c' needs an explicit port (e.g. http://host:8000)",
    ]
    with pytest.raises(UpstreamError, match="listed twice"):
        targets(EngineSettings(), GatewaySettings(upstream_urls="http://a:1,http://a:1"),
                WarmupSettings())  # fmt: skip


def test_reports_rich_and_the_worst_outcome() -> None:
    base = Path("/r/report.json")
    t = Target("10.0.0.5:8000", "http://10.0.0.5:8000")
    assert report_path_for(base, t, several=False) == base
    assert report_path_for(base, t, several=True) == Path("/r/report-10.0.0.5-8000.json")
    assert use_rich(1, watch=True, parallel=1) and use_rich(3, watch=False, parallel=1)
    assert not use_rich(3, watch=True, parallel=1) and not use_rich(3, watch=False, parallel=2)
    outcomes = [Outcome("passed"), Outcome("gateway_error"), Outcome("failed")]
    assert worst(outcomes).status == "gateway_error"
    assert worst([Outcome("passed"), Outcome("passed")]).exit_code == 0


# --- the process ----------------------------------------------------------------------------------


def warmup(tmp_path: Path, engines: str, *extra: str, **env: str) -> subprocess.Popen[str]:
    profile = tmp_path / "synthetic.env"
    profile.write_text(SYNTHETIC_PROFILE)
    token = tmp_path / "internal-token"
    token.write_text("test-token\n")
    full_env = {
        **os.environ,
        "WARMUP_ENGINE_URL": engines,
        "GATEWAY_INTERNAL_TOKEN_FILE": str(token),
        "WARMUP_GATEWAY_TIMEOUT_S": "5",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    argv = [sys.executable, "-m", "warmup", "--profile", str(profile), "--plain",
            "--report", str(tmp_path / "report.json"), *extra]  # fmt: skip
    log = (tmp_path / "warmup.log").open("w")
    return subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip


def instance_of(url: str) -> str:
    found = engine_instance(httpx.get(f"{url}/metrics", timeout=10).text)
    assert found is not None
    return found


def test_one_shot_warms_and_reports_each_replica_and_exits_with_the_worst(
    tmp_path: Path,
) -> None:
    with (
        synthetic_upstream("synthetic", itl_ms=1.0, ttft_ms=0.0) as (a, _),
        synthetic_upstream("synthetic", itl_ms=1.0, ttft_ms=0.0) as (b, _),
    ):
        gateway = FakeReplicaGateway(instances={instance_of(a), instance_of(b)})
        with serve(gateway.app) as gw_url:
            proc = warmup(tmp_path, f"{a},{b}", WARMUP_GATEWAY_URL=gw_url)
            assert proc.wait(timeout=120) == 0, (tmp_path / "warmup.log").read_text()[-3000:]
            dead = f"http://127.0.0.1:{free_port()}"
            (tmp_path / "second").mkdir()
            again = warmup(tmp_path / "second", f"{a},{dead}", WARMUP_GATEWAY_URL=gw_url,
                           VLLM_ENGINE_READY_TIMEOUT_S="2")  # fmt: skip
            code = again.wait(timeout=120)
    log = (tmp_path / "warmup.log").read_text()
    name_a, name_b = a.removeprefix("http://"), b.removeprefix("http://")
    # every replica reported for its own instance, once each
    assert sorted(gateway.finals()[:2]) == sorted([(instance_of_log(log, name_a), "passed"),
                                                   (instance_of_log(log, name_b), "passed")])  # fmt: skip
    for name in (name_a, name_b):
        assert f"warmup[{name}]: running 6 steps" in log
        host, port = name.split(":")
        assert (tmp_path / f"report-{host}-{port}.json").is_file()
    assert not (tmp_path / "report.json").exists()
    # a replica that never comes up: exit 2 (the worst), a line for it, a summary line
    other_log = (tmp_path / "second" / "warmup.log").read_text()
    assert code == 2, other_log[-3000:]
    lines = other_log.strip().splitlines()
    dead_name = dead.removeprefix("http://")
    assert any(line.startswith(f"warmup: {dead_name}: not_ready: engine {dead}") for line in lines)
    assert lines[-1] == f"warmup: 2 replicas: {name_a} passed, {dead_name} not_ready (exit 2)"


def instance_of_log(log: str, name: str) -> str:
    """The instance the log says replica ``name`` was warmed as."""
    match = re.search(rf"warmup\[{re.escape(name)}\]: engine \S+ instance (\S+),", log)
    assert match, log[-2000:]
    return match.group(1)


def ready(status_url: str, replica: str | None = None) -> tuple[int, dict]:
    params = {"replica": replica} if replica else None
    try:
        resp = httpx.get(f"{status_url}/ready", params=params, timeout=5)
    except httpx.TransportError:
        return 0, {}
    return resp.status_code, resp.json()


def wait_for(what, timeout_s: float, log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"never happened; log:\n{log.read_text()[-3000:]}")


@pytest.mark.timeout(240)
def test_watch_rewarms_only_the_restarted_replica_and_ready_follows_it(tmp_path: Path) -> None:
    """``--watch --no-notify`` with the status server (the Kubernetes shape: nobody to push to)."""
    port_a, port_b, status_port = free_port(), free_port(), free_port()
    status = f"http://127.0.0.1:{status_port}"
    log = tmp_path / "warmup.log"
    with synthetic_engine(port_a) as a:
        name_a, name_b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
        b_engine = synthetic_engine(port_b)
        b = b_engine.__enter__()
        proc = warmup(tmp_path, f"{a},{b}", "--watch", "--no-notify",
                      WARMUP_STATUS_PORT=str(status_port), WARMUP_WATCH_INTERVAL_S="0.2")  # fmt: skip
        try:
            _, doc = wait_for(lambda: (r := ready(status))[0] == 200 and r, 90, log)
            first_b = next(r["engine_instance"] for r in doc["replicas"] if r["replica"] == name_b)
            first_a = instance_of(a)
            b_engine.__exit__(None, None, None)  # replica B dies ...
            wait_for(lambda: ready(status, name_b)[1].get("state") == "engine_down", 30, log)
            assert ready(status)[0] == 503, "not every replica is warm"
            assert ready(status, name_a)[0] == 200, "A is untouched"
            b_engine = synthetic_engine(port_b)  # ... and comes back as a new instance
            b_engine.__enter__()
            _, doc = wait_for(lambda: (r := ready(status, name_b))[0] == 200 and r, 90, log)
            assert doc["engine_instance"] != first_b
            assert ready(status)[0] == 200
            assert httpx.get(f"{status}/livez", timeout=5).status_code == 200
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            exit_code = proc.wait(timeout=30)
            b_engine.__exit__(None, None, None)
    assert exit_code == 0
    text = log.read_text()
    assert text.count(f"warmup[{name_a}]: running 6 steps") == 1, "A was not warmed again"
    assert text.count(f"warmup[{name_b}]: running 6 steps") == 2, "B was, once per instance"
    assert instance_of_log(text, name_a) == first_a
