"""The /proc views used to stop whole process trees and to check for orphans."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from entrypoint.process import descendants, describe, dying, group_members, groups_of, stop_group


def _tree() -> subprocess.Popen[bytes]:
    """A session leader with a child and a grandchild: sh -> (sh -> sleep)."""
    proc = subprocess.Popen(
        ["sh", "-c", "sh -c 'sleep 30; :' & sleep 30; :"], start_new_session=True
    )
    deadline = time.monotonic() + 10
    while len(descendants(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def test_descendants_groups_and_members_see_the_whole_tree() -> None:
    proc = _tree()
    try:
        kids = descendants(proc.pid)
        assert len(kids) == 3 and proc.pid not in kids
        assert set(kids) <= set(descendants(os.getpid()))
        assert groups_of(kids) == {proc.pid}
        assert sorted(group_members(proc.pid)) == sorted([proc.pid, *kids])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_dying_tells_a_killed_process_from_a_survivor() -> None:
    """A running process is not dying, not even while stopped; once killed (a zombie not yet
    reaped, then gone) it is. ``describe`` names the state an orphan check reports."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        # asleep in ``sleep`` (not still exec'ing it: a CI run read ``R`` at once)
        _wait(lambda: describe(proc.pid).startswith(f"{proc.pid}: state S"), why="asleep")
        assert not dying(proc.pid) and "sleep 30" in describe(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        _wait(lambda: describe(proc.pid).startswith(f"{proc.pid}: state T"), why="stopped")
        assert not dying(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        _wait(lambda: describe(proc.pid).startswith(f"{proc.pid}: state Z"), why="a zombie")
        assert dying(proc.pid) and proc.pid not in group_members(os.getpgid(0))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert dying(proc.pid) and describe(proc.pid) == f"{proc.pid}: gone"


def test_stop_group_leaves_no_member() -> None:
    proc = _tree()
    stop_group(proc, grace_s=5)
    deadline = time.monotonic() + 5
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(proc.pid) == []
    assert descendants(proc.pid) == []


# --- run_group: the entrypoint's own life cycle (it installs signal handlers, so it runs in a
# process of its own here, a driver that prints what run_group returned) ----------------------

DRIVER = """
import os, sys
from entrypoint.process import run_group
print("returned", run_group(["sh", "-c", sys.argv[1]], os.environ, grace_s=float(sys.argv[2])),
      flush=True)
"""


def _driver(tmp_path: Path, script: str, grace_s: float = 10.0) -> subprocess.Popen[str]:
    """The driver (its own session, so the test can signal it alone) running ``sh -c script``;
    ``$PIDFILE`` is where the script writes its PID (the group it leads). The script's own
    output goes to /dev/null: its children must not hold the driver's pipes open."""
    env = {**os.environ, "PIDFILE": str(tmp_path / "child.pid")}
    script = f"exec </dev/null >/dev/null 2>&1; {script}"
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, script, str(grace_s)], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def _wait(what, timeout_s: float = 30.0, why: str = ""):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {why}")


def _handles_sigterm(pid: int) -> bool:
    """True once ``pid`` has a handler installed for SIGTERM (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(
        next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt")), 16
    )
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _child_group(tmp_path: Path) -> int:
    pidfile = tmp_path / "child.pid"
    return int(_wait(lambda: pidfile.exists() and pidfile.read_text().strip(), why="child pid"))


@pytest.fixture
def driver_of(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start drivers; at the end SIGKILL whatever a failed test left (by group, never by name)."""
    started: list[subprocess.Popen[str]] = []

    def start(script: str, grace_s: float = 10.0) -> subprocess.Popen[str]:
        started.append(_driver(tmp_path, script, grace_s))
        return started[-1]

    yield start
    groups = [d.pid for d in started]
    with contextlib.suppress(OSError, ValueError):
        groups.append(int((tmp_path / "child.pid").read_text()))
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    for d in started:
        d.communicate(timeout=30)


def _finish(driver: subprocess.Popen[str]) -> tuple[str, str]:
    return driver.communicate(timeout=60)


def test_run_group_returns_the_childs_exit_code(driver_of) -> None:
    out, _ = _finish(driver_of("exit 7"))
    assert out.strip() == "returned 7"


def test_sigterm_is_forwarded_to_the_whole_group(tmp_path: Path, driver_of) -> None:
    """SIGTERM to the entrypoint alone stops vLLM's whole group (API server and its children);
    a stop we asked for is a clean exit 0."""
    driver = driver_of('echo $$ > "$PIDFILE"; sleep 600 & sleep 600 & wait')
    pgid = _child_group(tmp_path)
    _wait(lambda: len(group_members(pgid)) == 3, why="sh and its two sleeps")
    _wait(lambda: _handles_sigterm(driver.pid), why="run_group installed its handler")
    os.kill(driver.pid, signal.SIGTERM)
    _wait(lambda: group_members(pgid) == [], why="every member of the group gone")
    out, err = _finish(driver)
    assert out.strip() == "returned 0"
    assert (
        f"entrypoint: got signal {int(signal.SIGTERM)}, stopping vLLM process group {pgid}" in err
    )


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path, driver_of) -> None:
    driver = driver_of("trap '' TERM; echo $$ > \"$PIDFILE\"; sleep 600 & wait", grace_s=1)
    pgid = _child_group(tmp_path)
    _wait(lambda: len(group_members(pgid)) == 2, why="sh and its sleep")
    _wait(lambda: _handles_sigterm(driver.pid), why="run_group installed its handler")
    os.kill(driver.pid, signal.SIGTERM)
    _wait(lambda: group_members(pgid) == [], why="the whole group killed")
    out, _ = _finish(driver)
    assert out.strip() == f"returned {-signal.SIGKILL}"  # killed, not a clean stop


def test_children_left_behind_by_an_exiting_server_are_killed(tmp_path: Path, driver_of) -> None:
    """The API server exits on its own (the engine died) while a child lives on: the group goes."""
    driver = driver_of('echo $$ > "$PIDFILE"; sleep 600 & exit 3')
    pgid = _child_group(tmp_path)
    _wait(lambda: group_members(pgid) == [], why="the orphaned sleep killed with its group")
    out, _ = _finish(driver)
    assert out.strip() == "returned 3"
