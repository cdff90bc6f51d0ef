"""`make dev` (deploy.dev): roles come up, the gateway turns ready, Ctrl-C leaves no process.

The restart policy (``Supervisor``) is tested with fake engines: small Python processes that,
like the entrypoint, start a child in a process group of its own (vLLM), so a SIGKILLed leader
would orphan it. Then two runs of ``python -m deploy.dev`` (what ``make dev`` execs): one exactly as a developer gets it,
starting its own engine (the real vLLM CPU engine, whose EngineCore and workers live in process
groups of their own: the orphan case that matters), and one with ``--engine-url`` against the
session's engine, which must be left running. Ctrl-C is delivered as a terminal does: SIGINT to
the foreground process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.dev import DevError, Restartable, Role, Stopped, Supervisor, restart_replica
from entrypoint.process import descendants
from tests.support.engine import seed_compile_cache
from tests.support.load import steady_chats
from tests.support.process import REPO, ServerProcess, consecutive_free_ports, free_port
from tests.support.stack import chat_once
from tests.support.wait import wait_until

READY_S = 420  # engine start (40-150 s on 2 shared cores) + warm-up


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _dev(tmp_path: Path, gateway_port: int, *args: str, **env: str) -> ServerProcess:
    """``python -m deploy.dev --profile cpu ARGS``, ready when the gateway's /health is 200;
    its engines start from the session's compile cache (a user's second ``make dev``)."""
    seed_compile_cache(tmp_path / "persist")
    return ServerProcess(
        argv=[sys.executable, "-m", "deploy.dev", "--profile", "cpu", *args],
        env={
            "GATEWAY_PORT": str(gateway_port),
            "GATEWAY_INTERNAL_TOKEN_FILE": str(tmp_path / "internal-token"),
            "WARMUP_REPORT_PATH": str(tmp_path / "report.json"),
            "CACHE_HOT_DIR": str(tmp_path / "hot"),
            "CACHE_PERSIST_DIR": str(tmp_path / "persist"),
            **env,
        },
        ready_url=f"http://127.0.0.1:{gateway_port}/health",
        log_path=tmp_path / "dev.log",
    )


def _roles(dev_pid: int) -> dict[str, int]:
    """The roles dev runs now, from the process table: ``python -m <role>`` children -> pid."""
    roles: dict[str, int] = {}
    for pid in descendants(dev_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-m" in argv[:-1] and _ppid(pid) == dev_pid:
            roles[argv[argv.index(b"-m") + 1].decode()] = pid
    return roles


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _warmup_report(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((tmp_path / "report.json").read_text())


def _ctrl_c_stops_everything(dev: ServerProcess, gateway_port: int) -> str:
    """Ctrl-C the ready stack; assert a clean exit and no surviving role process. Returns log."""
    # The one-shot warm-up may already have exited (it reports "passed", which turns /health
    # green, then saves the compile cache and ends): the gateway at least is still running.
    children = descendants(dev.pid)
    assert children, "dev started no role processes"
    os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in a terminal delivers
    assert dev.proc is not None
    assert dev.proc.wait(timeout=90) == 0, dev.log_tail()
    leftovers = [pid for pid in children if _alive(pid)]
    assert leftovers == [], f"orphans after Ctrl-C: {leftovers}\n{dev.log_tail()}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{gateway_port}/livez", timeout=3)
    log = dev.log_path.read_text(errors="replace")
    assert "all roles stopped" in log
    return log


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.timeout(READY_S + 180)
def test_make_dev_starts_its_engine_and_ctrl_c_stops_all(tiny_model: None, tmp_path: Path) -> None:
    gateway_port, engine_port = free_port(), free_port()
    dev = _dev(tmp_path, gateway_port, ENGINE_PORT=str(engine_port))
    try:
        dev.start(timeout_s=READY_S)
        chat_once(f"http://127.0.0.1:{gateway_port}")
        # dev runs the three roles itself; the engine's vLLM children (API server, EngineCore)
        # are among its descendants
        roles = _roles(dev.pid)
        assert set(roles) == {"entrypoint", "gateway", "warmup"}, roles
        assert len(descendants(roles["entrypoint"])) >= 2
        # the warm-up that turned /health green is dev's, and it warmed dev's own engine
        report = _warmup_report(tmp_path)
        assert report["outcome"] == "passed", report.get("error")
        assert report["engine"]["url"].rstrip("/") == f"http://127.0.0.1:{engine_port}"

        _ctrl_c_stops_everything(dev, gateway_port)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{engine_port}/health", timeout=3)
    finally:
        dev.stop()


@pytest.mark.engine
@pytest.mark.timeout(300)
def test_dev_with_engine_url_leaves_the_engine_alone(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gateway_port = free_port()
    dev = _dev(tmp_path, gateway_port, "--engine-url", engine.url)
    try:
        dev.start(timeout_s=200)
        # a gateway and a warm-up, no engine of its own; the warm-up warmed the external one
        roles = _roles(dev.pid)
        assert set(roles) == {"gateway", "warmup"}, roles
        report = _warmup_report(tmp_path)
        assert report["outcome"] == "passed", report.get("error")
        assert report["engine"]["url"].rstrip("/") == engine.url
        _ctrl_c_stops_everything(dev, gateway_port)
        assert httpx.get(f"{engine.url}/health", timeout=5).status_code == 200, (
            "an external engine must be left alone"
        )
    finally:
        dev.stop()


# --- the restart policy, with fake engines ---------------------------------------------------------

# An "engine": writes its pid, starts a "vLLM" child in a session of its own (its pid written
# too), then sleeps. SIGKILL to the leader orphans the child unless the supervisor kills it.
FAKE_ENGINE = """
import os, subprocess, sys, time
out = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
with open(out + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}")
os.replace(out + ".tmp", out)
time.sleep(600)
"""


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fake_engine(tmp_path: Path, name: str) -> tuple[Role, Path]:
    out = tmp_path / f"{name}.pids"
    return Role(name, [sys.executable, "-c", FAKE_ENGINE, str(out)], {}, grace_s=5), out


def pids(out: Path, old: str | None = None, timeout_s: float = 30) -> tuple[int, int]:
    """(leader, child) once the fake engine wrote them (a new pair when ``old`` is given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out.exists() and (text := out.read_text()) != old:
            leader, child = text.split()
            return int(leader), int(child)
        time.sleep(0.05)
    raise AssertionError(f"fake engine never wrote {out}")


def wait_dead(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def freshly_booted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``time.monotonic`` read as on a machine that booted 5 s ago (it still advances).

    CI machines are often minutes old: a policy that mixed its injected clock (1,000 s here) with
    the real monotonic clock took every death for one after a long run there, and reset the
    backoff (seen in a fresh-clone CI run). ``subprocess`` and ``threading`` keep their own
    reference to the real function, so process waits are unaffected.
    """
    real = time.monotonic
    booted = real() - 5.0
    monkeypatch.setattr(time, "monotonic", lambda: real() - booted)


@pytest.mark.timeout(120)
def test_a_sigkilled_replica_is_restarted_with_backoff_and_the_others_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    freshly_booted(monkeypatch)
    (a, a_out), (b, b_out) = fake_engine(tmp_path, "engine-0"), fake_engine(tmp_path, "engine-1")
    clock = FakeClock()
    sup = Supervisor([ma := Restartable(a), mb := Restartable(b)], now=clock)
    try:
        sup.start(ma), sup.start(mb)
        a_leader, a_child = pids(a_out)
        b_leader, b_child = pids(b_out)
        sup.tick()  # remembers each tree's groups (the children lead their own)
        assert a_child in a.groups or os.getpgid(a_child) in a.groups

        os.kill(a_leader, signal.SIGKILL)  # replica 0 dies hard
        assert a.proc is not None and a.proc.wait(timeout=10) == -signal.SIGKILL
        sup.tick()
        assert wait_dead(a_child), "the dead replica's own child is not left behind"
        assert "engine-0 exited with -9; restarting in 1 s (restart #1)" in capsys.readouterr().out
        sup.tick()
        assert a.exit_code is not None, "not before the backoff"
        clock.t += 1.0
        sup.tick()
        new_leader, new_child = pids(a_out, old=f"{a_leader} {a_child}")
        assert new_leader != a_leader and a.pid == new_leader

        # the other replica was never touched
        assert b.pid == b_leader and _alive(b_leader) and _alive(b_child)

        # dying again soon: the backoff doubles
        sup.tick()
        os.kill(new_leader, signal.SIGKILL)
        a.proc.wait(timeout=10)
        sup.tick()
        assert "engine-0 exited with -9; restarting in 2 s (restart #2)" in capsys.readouterr().out
        assert wait_dead(new_child)

        # after a minute of running (on the policy's clock), a death starts the backoff over
        clock.t += 2.0
        sup.tick()
        third_leader, third_child = pids(a_out, old=f"{new_leader} {new_child}")
        clock.t += 61.0
        sup.tick()  # remembers the new tree's groups
        os.kill(third_leader, signal.SIGKILL)
        a.proc.wait(timeout=10)
        sup.tick()
        assert "engine-0 exited with -9; restarting in 1 s (restart #3)" in capsys.readouterr().out
        assert wait_dead(third_child)
    finally:
        a.stop(), b.stop()
    assert all(wait_dead(p) for p in (b_leader, b_child, a.pid or 0)), "Ctrl-C's stop leaves none"


def test_an_engine_that_never_served_stops_the_stack(tmp_path: Path) -> None:
    role = Role("engine", [sys.executable, "-c", "raise SystemExit(3)"], {})
    sup = Supervisor([Restartable(role, health_url=f"http://127.0.0.1:{free_port()}/health")])
    role.start()
    assert role.proc is not None
    role.proc.wait(timeout=30)
    with pytest.raises(Stopped, match="engine exited with 3 before it ever served /health"):
        sup.tick()


@pytest.mark.timeout(60)
def test_a_start_silent_for_two_minutes_is_diagnosed_once_and_a_chatty_one_never(
    tmp_path: Path,
) -> None:
    """A start that prints nothing and does not serve is diagnosed while it runs, once; one that
    keeps printing (a slow start) is not. Time is the policy's clock alone."""
    silent = Role("engine-0", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    chatty = Role(
        "engine-1",
        [sys.executable, "-c", "import time\nwhile True: print('loading', flush=True); time.sleep(0.02)"],
        {},
    )  # fmt: skip
    nowhere = f"http://127.0.0.1:{free_port()}/health"  # never serves
    diagnosed: list[tuple[str, float]] = []
    clock = FakeClock()
    members = [Restartable(silent, health_url=nowhere), Restartable(chatty, health_url=nowhere)]
    sup = Supervisor(members, now=clock, diagnose=lambda m, q: diagnosed.append((m.role.name, q)))
    try:
        for m in members:
            sup.start(m)
        for step in (60.0, 59.0, 2.0, 200.0):
            lines = chatty.lines
            deadline = time.monotonic() + 10
            while chatty.lines == lines:  # the chatty one printed since the last tick
                assert time.monotonic() < deadline
                time.sleep(0.02)
            clock.t += step
            sup.tick()
            if step == 59.0:
                assert diagnosed == [], "not before two minutes of silence"
        assert diagnosed == [("engine-0", 121.0)]
        assert silent.lines == 0 and chatty.lines > 0
    finally:
        silent.stop(), chatty.stop()


@pytest.mark.timeout(60)
def test_restart_replica_signals_only_a_replica_of_the_running_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    role, out = fake_engine(tmp_path, "engine-1")
    marker = tmp_path / "engine-1.restart"
    sup = Supervisor([member := Restartable(role, marker=marker)], now=FakeClock())
    with pytest.raises(DevError, match="no make dev stack with replica 1 is running"):
        restart_replica(tmp_path, 1)
    try:
        sup.start(member)
        leader, child = pids(out)
        (tmp_path / "dev.pid").write_text(f"{os.getpid()}\n")  # this test is the stack
        (tmp_path / "engine-1.pid").write_text(f"{child}\n")  # not a child of the stack
        with pytest.raises(DevError, match=f"replica 1 \\(pid {child}\\) is not running under"):
            restart_replica(tmp_path, 1)
        (tmp_path / "engine-1.pid").write_text(f"{leader}\n")
        sup.tick()
        assert restart_replica(tmp_path, 1) == leader
        assert role.proc is not None and role.proc.wait(timeout=10) == -signal.SIGTERM
        sup.tick()  # requested: no backoff
        assert "engine-1 restart requested; restarting in 0 s" in capsys.readouterr().out
        assert not marker.exists()
        sup.tick()
        assert pids(out, old=f"{leader} {child}")[0] == role.pid != leader
        assert wait_dead(child)
    finally:
        role.stop()


# --- make dev REPLICAS=2: the one real check ------------------------------------------------------


def _replicas(gateway: str) -> dict[str, dict]:
    body = httpx.get(f"{gateway}/health", timeout=5).json()
    return {r["name"]: r for r in body.get("replicas") or []}


def _wait(what, why: str, timeout_s: float, dev: ServerProcess):  # type: ignore[no-untyped-def]
    """``wait_until`` (a gateway that does not answer in time is "not yet"), with dev's log."""
    try:
        return wait_until(what, why, timeout_s, interval_s=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dev.log_tail()}") from None


def _make_rolling_restart(tmp_path: Path, gateway_port: int, run_dir: Path, gateway: str,  # type: ignore[no-untyped-def]
                          replica: str):  # fmt: skip
    """``make rolling-restart REPLICA=...`` against the running make dev stack, under a light
    load (one client, a chat every 0.5 s): returns (the make run, every request's status)."""
    with steady_chats(gateway, clients=1, tag="rolling") as results:
        roll = subprocess.run(
            ["make", "--no-print-directory", "rolling-restart", "PROFILE=cpu",
             f"DEV_RUN_DIR={run_dir}", f"REPLICA={replica}"],
            cwd=REPO, capture_output=True, text=True, timeout=2 * READY_S,
            env={**os.environ, "GATEWAY_PORT": str(gateway_port),
                 "GATEWAY_INTERNAL_TOKEN_FILE": str(tmp_path / "internal-token")},
        )  # fmt: skip
    return roll, list(results)


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.timeout(4 * READY_S + 180)
def test_make_dev_replicas_restarts_a_killed_replica_and_ctrl_c_stops_all(
    tiny_model: None, tmp_path: Path
) -> None:
    """``make dev REPLICAS=2``: both replicas warm; SIGKILL replica 1's group (its vLLM lives in
    groups of its own): dev kills what is left of it and starts it again, replica 0 untouched,
    the gateway 200 all along, the new instance served only once warm; Ctrl-C leaves no process
    of any group. (The rolling restart under load is the gateway side's end-to-end test.)"""
    gateway_port, base = free_port(), consecutive_free_ports(2)
    gateway = f"http://127.0.0.1:{gateway_port}"
    run_dir = tmp_path / "run"
    names = [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
    # Eager engines: what is tested is supervision, not compilation, and an eager CPU engine
    # starts in about 25 s instead of 45 (three starts here).
    dev = _dev(tmp_path, gateway_port, "--replicas", "2", "--run-dir", str(run_dir),
               ENGINE_PORT=str(base), WARMUP_WATCH_INTERVAL_S="1",
               ENGINE_ENFORCE_EAGER="true")  # fmt: skip
    seen: set[int] = set()
    try:
        dev.start(timeout_s=READY_S)
        both = lambda: all(r["state"] == "ready" for r in _replicas(gateway).values())  # noqa: E731
        _wait(
            lambda: set(_replicas(gateway)) == set(names) and both(),
            "both replicas ready",
            READY_S,
            dev,
        )
        seen |= set(descendants(dev.pid))
        pid0 = int((run_dir / "engine-0.pid").read_text())
        pid1 = int((run_dir / "engine-1.pid").read_text())
        old1 = _replicas(gateway)[names[1]]["engine_instance"]
        tree1 = descendants(pid1)
        assert tree1, "replica 1 runs vLLM under its entrypoint"

        os.killpg(pid1, signal.SIGKILL)  # the entrypoint's group; vLLM's groups are orphaned
        codes = []

        def back() -> bool:
            codes.append(httpx.get(f"{gateway}/health", timeout=5).status_code)
            r = _replicas(gateway)[names[1]]
            return r["state"] == "ready" and r["engine_instance"] != old1

        _wait(back, "replica 1 ready with a new instance", READY_S, dev)
        assert set(codes) == {200}, "replica 0 kept the gateway serving"
        assert not [p for p in tree1 if _alive(p)], "the killed replica's vLLM was not left behind"
        assert int((run_dir / "engine-0.pid").read_text()) == pid0 and _alive(pid0)
        assert int((run_dir / "engine-1.pid").read_text()) != pid1
        log = dev.log_path.read_text(errors="replace")
        assert "engine-1 exited with -9; restarting in 1 s (restart #1)" in log
        seen |= set(descendants(dev.pid))

        # make rolling-restart itself on this stack (deploy.rolling --restart dev), for replica
        # 0 (replica 1 is new already; one engine start fewer): drained, stopped gracefully and
        # started at once by dev's policy, re-warmed by the real --watch warm-up, undrained;
        # the load meanwhile fails nothing, replica 1 is untouched
        instances = {n: r["engine_instance"] for n, r in _replicas(gateway).items()}
        engine_pids = {i: int((run_dir / f"engine-{i}.pid").read_text()) for i in (0, 1)}
        roll, results = _make_rolling_restart(tmp_path, gateway_port, run_dir, gateway, names[0])
        assert roll.returncode == 0, f"{roll.stdout}\n{roll.stderr}\n{dev.log_tail()}"
        assert "done: 1 replica(s) restarted" in roll.stdout, roll.stdout
        now = _replicas(gateway)
        assert {n: r["state"] for n, r in now.items()} == dict.fromkeys(names, "ready"), now
        assert now[names[0]]["engine_instance"] not in (None, instances[names[0]]), now
        assert now[names[1]]["engine_instance"] == instances[names[1]], now
        assert int((run_dir / "engine-0.pid").read_text()) != engine_pids[0]
        assert not _alive(engine_pids[0]), "replica 0's old entrypoint still runs"
        assert int((run_dir / "engine-1.pid").read_text()) == engine_pids[1]
        log = dev.log_path.read_text(errors="replace")
        assert "engine-0 restart requested; restarting in 0 s" in log
        assert "engine-1 restart requested" not in log
        failed = [r for r in results if r != 200]
        assert results and failed == [], (len(results), failed[:5])
        seen |= set(descendants(dev.pid))

        os.killpg(dev.pid, signal.SIGINT)
        assert dev.proc is not None and dev.proc.wait(timeout=120) == 0, dev.log_tail()
        leftovers = [p for p in seen if _alive(p)]
        assert leftovers == [], f"orphans after Ctrl-C: {leftovers}\n{dev.log_tail()}"
        assert not list(run_dir.glob("*.pid"))
    finally:
        dev.stop()
