"""deploy/rolling.py against a fake gateway: a loopback HTTP server with the internal replica API.

``FakeGateway`` keeps each replica's state, instance, draining flag and in-flight count, checks
the bearer token, and lets a "restart" take the replica through engine_down -> warming_up (a new
instance) -> ready over the next polls, as the real gateway would see a restarted, re-warmed
engine. Every GET records how many replicas were serving (ready, not draining), so the tests
can assert the minimum was never broken, and the event log gives the order of the phases.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deploy.rolling import Clock, Internal, RollingError, command_restart, drain, rolling_restart
from tests.support import fakehttp
from tests.support.process import REPO

TOKEN = "s3cret"


@dataclass
class FakeReplica:
    name: str
    instance: str
    inflight: int = 0
    state: str = "ready"
    draining: bool = False
    restarting: int = -1  # polls left until the restarted engine is ready; -1: not restarting
    restarts: int = 0


@dataclass
class FakeGateway:
    replicas: list[FakeReplica]
    min_ready: int = 1
    events: list[str] = field(default_factory=list)
    serving: list[int] = field(default_factory=list)  # serving replicas at each GET
    restart_polls: int = 3
    lock: threading.Lock = field(default_factory=threading.Lock)

    def find(self, name: str) -> FakeReplica | None:
        return next((r for r in self.replicas if r.name == name), None)

    def restart(self, name: str) -> None:
        with self.lock:
            r = self.find(name)
            assert r is not None and r.inflight == 0, "restarted with requests in flight"
            r.state, r.restarting, r.restarts = "engine_down", self.restart_polls, r.restarts + 1
            self.events.append(f"restart {name}")

    def tick(self) -> None:
        """One poll's worth of time: streams finish, restarting engines come up and warm."""
        for r in self.replicas:
            if r.inflight:
                r.inflight -= 1
            if r.restarting > 0:
                r.restarting -= 1
                if r.restarting == 1:
                    r.state, r.instance = "warming_up", f"{r.instance}+"
                elif r.restarting == 0:
                    r.state, r.restarting = "ready", -1

    def handle(self, method: str, path: str, auth: str | None) -> tuple[int, Any]:
        if path.startswith("/_restart/"):  # the restart command's door (no token)
            self.restart(path.removeprefix("/_restart/"))
            return 200, {}
        if auth != f"Bearer {TOKEN}":
            return 401, {"error": "bad internal token"}
        with self.lock:
            if method == "GET" and path == "/internal/replicas":
                self.tick()
                self.serving.append(sum(r.state == "ready" and not r.draining
                                        for r in self.replicas))  # fmt: skip
                rows = [{"name": r.name, "url": f"http://{r.name}", "state": r.state,
                         "engine_instance": r.instance, "draining": r.draining,
                         "inflight": r.inflight} for r in self.replicas]  # fmt: skip
                ready = sum(r.state == "ready" for r in self.replicas)
                return 200, {"replicas": rows, "ready": ready, "min_ready": self.min_ready}
            parts = path.strip("/").split("/")
            if method == "POST" and len(parts) == 4 and parts[3] in ("drain", "undrain"):
                r = self.find(parts[2])
                if r is None:
                    return 404, {"error": f"no replica {parts[2]}"}
                r.draining = parts[3] == "drain"
                self.events.append(f"{parts[3]} {r.name}")
                return 200, {"name": r.name, "draining": r.draining, "inflight": r.inflight}
        return 404, {"error": "not found"}


def serve(gw: FakeGateway) -> AbstractContextManager[str]:
    """The fake gateway on loopback; yields its URL."""
    return fakehttp.serve(
        lambda req: gw.handle(req.method, req.path, req.headers.get("authorization"))
    )


def three() -> FakeGateway:
    """Three replicas, at least two must serve; the third is still coming up (warming) for
    its first few polls, and the second has many streams in flight (they end one per poll)."""
    return FakeGateway([FakeReplica("127.0.0.1:8000", "a", inflight=2),
                        FakeReplica("127.0.0.1:8001", "b", inflight=60),
                        FakeReplica("127.0.0.1:8002", "c", state="warming_up", restarting=6)],
                       min_ready=2)  # fmt: skip


def clock(lines: list[str]) -> Clock:
    return Clock(sleep=lambda s: None, out=lines.append)


def internal(url: str, tmp_path: Path, token: str = TOKEN) -> Internal:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    return Internal(url, path)


def test_restarts_one_at_a_time_never_below_the_minimum(tmp_path: Path) -> None:
    gw = three()
    lines: list[str] = []
    with serve(gw) as url:
        done = rolling_restart(internal(url, tmp_path), lambda r, i: gw.restart(r.name),
                               drain_timeout_s=60, ready_timeout_s=60, clock=clock(lines),
                               poll_s=0)  # fmt: skip
    names = [r.name for r in gw.replicas]
    assert done == names
    # drain -> restart (only once its in-flight count reached 0: asserted in restart) -> undrain,
    # strictly one replica after another
    assert gw.events == [f"{e} {n}" for n in names for e in ("drain", "restart", "undrain")]
    assert [r.restarts for r in gw.replicas] == [1, 1, 1]
    assert [r.instance for r in gw.replicas] == ["a+", "b+", "c++"], "every one is a new instance"
    assert all(r.state == "ready" and not r.draining for r in gw.replicas)
    assert min(gw.serving) >= gw.min_ready
    text = "\n".join(lines)
    assert "127.0.0.1:8000: waiting for 2 other replica(s) to be ready" in text
    assert "127.0.0.1:8001: drained after" in text
    assert "127.0.0.1:8001 (2/3): ready, new instance b+" in text
    assert all(line.startswith("rolling: [") and " s] " in line for line in lines)


def test_too_few_replicas_is_refused_before_touching_anything(tmp_path: Path) -> None:
    gw = FakeGateway([FakeReplica("127.0.0.1:8000", "a"), FakeReplica("127.0.0.1:8001", "b")],
                     min_ready=2)  # fmt: skip
    with serve(gw) as url, pytest.raises(RollingError) as err:
        rolling_restart(internal(url, tmp_path), lambda r, i: gw.restart(r.name),
                        drain_timeout_s=5, ready_timeout_s=5, clock=clock([]), poll_s=0)  # fmt: skip
    assert str(err.value).startswith("refusing: 2 replica(s) and GATEWAY_MIN_READY_REPLICAS=2")
    assert gw.events == []


def test_a_replica_that_never_comes_back_stops_the_run_and_is_undrained(tmp_path: Path) -> None:
    gw = three()
    gw.restart_polls = 10**6  # never ready again
    ticks = iter(range(10**6))
    slow = Clock(now=lambda: float(next(ticks)), sleep=lambda s: None, out=lambda s: None)
    with serve(gw) as url, pytest.raises(RollingError, match="not ready with a new engine"):
        rolling_restart(internal(url, tmp_path), lambda r, i: gw.restart(r.name),
                        drain_timeout_s=60, ready_timeout_s=30, clock=slow, poll_s=0)  # fmt: skip
    assert gw.events == ["drain 127.0.0.1:8000", "restart 127.0.0.1:8000", "undrain 127.0.0.1:8000"]


def test_drain_waits_for_inflight_zero_and_times_out_with_one_line(tmp_path: Path) -> None:
    gw = three()
    lines: list[str] = []
    with serve(gw) as url:
        gi = internal(url, tmp_path)
        drain(gi, "127.0.0.1:8001", 60, clock(lines), poll_s=0)
        assert gw.find("127.0.0.1:8001").draining and gw.find("127.0.0.1:8001").inflight == 0
        gw.find("127.0.0.1:8000").inflight = 10**6
        ticks = iter(range(10**6))
        stuck = Clock(now=lambda: float(next(ticks)), sleep=lambda s: None, out=lines.append)
        with pytest.raises(RollingError, match=r"127.0.0.1:8000: still \d+ in flight after 5 s"):
            drain(gi, "127.0.0.1:8000", 5, stuck, poll_s=0)
        with pytest.raises(RollingError, match=r"no replica '10.0.0.1:1' \(it has: 127.0.0.1:8000"):
            drain(gi, "10.0.0.1:1", 5, clock(lines), poll_s=0)
        with pytest.raises(RollingError, match="HTTP 401"):
            internal(url, tmp_path, token="wrong").snapshot()
    assert "127.0.0.1:8001: draining (59 in flight)" in "\n".join(lines)


def test_the_restart_command_is_formatted_per_replica(tmp_path: Path) -> None:
    out = tmp_path / "out"
    restart = command_restart(f"{sys.executable} -c 'import sys; open(sys.argv[1], \"a\").write("
                              f"\" \".join(sys.argv[2:]) + \"\\n\")' {out} {{name}} {{host}} "
                              "{port} {index} {service}")  # fmt: skip
    from deploy.rolling import Replica

    restart(Replica("10.0.0.5:8001", "http://10.0.0.5:8001", "ready", "x", False, 0), 1)
    assert out.read_text() == "10.0.0.5:8001 10.0.0.5 8001 1 engine-1\n"
    with pytest.raises(RollingError, match="exited 3"):
        command_restart(f"{sys.executable} -c 'raise SystemExit(3)'")(
            Replica("a:1", "", "ready", None, False, 0), 0
        )


def test_the_cli_restarts_every_replica_through_a_command(tmp_path: Path) -> None:
    gw = three()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    with serve(gw) as url:
        cmd = (f"{sys.executable} -c 'import sys, urllib.request as u; "
               f"u.urlopen(sys.argv[1], data=b\"\")' {url}/_restart/{{name}}")  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "deploy.rolling", "--profile", "cpu", "--gateway-url", url,
             "--token-file", str(token), "--poll", "0.01", "restart", "--restart-cmd", cmd],
            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ},
        )  # fmt: skip
        refused = subprocess.run(
            [sys.executable, "-m", "deploy.rolling", "--profile", "cpu", "--gateway-url", url,
             "--token-file", str(token), "drain", "nope:1"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r.restarts for r in gw.replicas] == [1, 1, 1]
    assert done.stdout.strip().splitlines()[-1].endswith("done: 3 replica(s) restarted")
    assert refused.returncode == 1
    assert refused.stdout.strip().endswith("FAILED: the gateway has no replica 'nope:1' "
                                           "(it has: 127.0.0.1:8000, 127.0.0.1:8001, 127.0.0.1:8002)")  # fmt: skip


def test_the_cli_dev_restart_without_a_dev_stack_fails_in_one_line(tmp_path: Path) -> None:
    """``make rolling-restart`` (``--restart dev``) when no ``make dev`` stack runs: one line that
    says so, exit 1, the drained replica undrained, nothing restarted, no traceback."""
    gw = FakeGateway([FakeReplica("127.0.0.1:8000", "a"), FakeReplica("127.0.0.1:8001", "b")])
    token = tmp_path / "token"
    token.write_text(TOKEN)
    run_dir = tmp_path / "no-dev-stack"
    with serve(gw) as url:
        done = subprocess.run(
            [sys.executable, "-m", "deploy.rolling", "--profile", "cpu", "--gateway-url", url,
             "--token-file", str(token), "--poll", "0.01", "restart", "--restart", "dev",
             "--run-dir", str(run_dir)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == ""
    failed = [line for line in done.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].endswith(
        f"FAILED: no make dev stack with replica 0 is running (run dir {run_dir})"
    ), done.stdout
    assert gw.events == ["drain 127.0.0.1:8000", "undrain 127.0.0.1:8000"]
    assert [r.restarts for r in gw.replicas] == [0, 0] and not gw.replicas[0].draining
