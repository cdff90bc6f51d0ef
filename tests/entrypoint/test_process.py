"""The /proc views used to stop whole process trees and to check for orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from entrypoint.process import descendants, group_members, groups_of, stop_group


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


def test_stop_group_leaves_no_member() -> None:
    proc = _tree()
    stop_group(proc, grace_s=5)
    deadline = time.monotonic() + 5
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(proc.pid) == []
    assert descendants(proc.pid) == []
