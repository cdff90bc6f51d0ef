"""What a process tree is doing, read from ``/proc``: for a start that printed nothing.

A server that prints nothing can be slow (importing, compiling, starved of CPU) or stuck (a lock,
a pipe nobody reads, a futex). The difference shows in two samples taken some seconds apart:
a slow process gains CPU time (utime + stime) between them, a stuck one does not, and its
``wchan`` / kernel stack / Python stack say where it waits. ``report`` gathers, for every process
of the tree, ``/proc/<pid>/stat`` (state, CPU ticks, the core it last ran on), ``status``
(RSS, threads, context switches), ``wchan``, ``stack`` where readable (root), the command line
and its CPU growth; plus the host's ``/proc/pressure/{cpu,memory,io}``, ``/proc/meminfo`` and
load, the busiest processes of the host, and ``py-spy dump`` of each Python process when py-spy
is installed (the dev extra installs it). Whoever stops such a start first calls this, so a
recurrence explains itself instead of being destroyed with the process.

Linux only; every read that fails is reported as such, never raised: a diagnostic must not
become the failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from entrypoint.process import descendants

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[:limit].strip()
    except OSError as exc:
        return f"(unreadable: {exc.strerror or exc})"


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks, None once it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _stat_line(pid: int) -> str:
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "(gone)"
    # after the name: 0 state, 1 ppid, 2 pgrp, 3 session, 11 utime, 12 stime, 17 nthreads,
    # 36 processor (the core it last ran on)
    return (
        f"state={fields[0]} ppid={fields[1]} pgrp={fields[2]} sid={fields[3]} "
        f"utime={fields[11]} stime={fields[12]} threads={fields[17]} core={fields[36]}"
    )


def _status(pid: int) -> str:
    keep = ("State", "VmRSS", "Threads", "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches",
            "Cpus_allowed_list", "SigBlk", "SigIgn")  # fmt: skip
    text = _read(PROC / str(pid) / "status", 10000)
    return "; ".join(line for line in text.splitlines() if line.startswith(keep))


def describe(pid: int) -> str:
    """One process: stat, status, wchan, kernel stack, command line."""
    cmd = _read(PROC / str(pid) / "cmdline").replace("\0", " ")
    lines = [
        f"pid {pid}: {cmd[:300]}",
        f"  stat:   {_stat_line(pid)}",
        f"  status: {_status(pid)}",
        f"  wchan:  {_read(PROC / str(pid) / 'wchan')}",
    ]
    stack = _read(PROC / str(pid) / "stack", 2000)
    lines.append("  stack:  " + stack.replace("\n", "\n          "))
    return "\n".join(lines)


def host_state() -> str:
    """CPU/memory/IO pressure, memory, load, and the busiest processes of the host."""
    out = ["host:"]
    for kind in ("cpu", "memory", "io"):
        pressure = _read(PROC / "pressure" / kind).replace("\n", " | ")
        out.append(f"  pressure {kind}: {pressure}")
    meminfo = {
        k: v.strip()
        for k, _, v in (line.partition(":") for line in _read(PROC / "meminfo").splitlines())
    }
    out.append(
        "  memory: "
        + ", ".join(f"{k} {meminfo.get(k, '?')}" for k in ("MemTotal", "MemAvailable", "Shmem"))
    )
    out.append(f"  loadavg: {_read(PROC / 'loadavg')}")
    out.append(f"  uptime: {_read(PROC / 'uptime')}")
    if shutil.which("ps"):
        try:
            ps = subprocess.run(
                ["ps", "-eo", "pid,ppid,pgid,stat,psr,pcpu,rss,etimes,args", "--sort=-pcpu"],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
            rows = ps.stdout.splitlines()[:25]
            out.append("  busiest processes:\n    " + "\n    ".join(r[:220] for r in rows))
        except (OSError, subprocess.SubprocessError) as exc:
            out.append(f"  ps failed: {exc}")
    return "\n".join(out)


def _py_spy(pid: int) -> str | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).is_file():
        return None
    try:
        run = subprocess.run(
            [exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"py-spy dump {pid} failed: {exc}"
    return f"py-spy dump {pid} (exit {run.returncode}):\n{(run.stdout or run.stderr)[-6000:]}"


def _is_python(pid: int) -> bool:
    return "python" in _read(PROC / str(pid) / "cmdline").split("\0")[0]


def report(
    root: int,
    interval_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    tree: Callable[[int], Iterable[int]] = descendants,
) -> str:
    """The tree under ``root`` sampled twice ``interval_s`` apart, with CPU growth per process,
    the host's state, and the Python stacks. Plain text, for a log or a test's output."""
    pids = [root, *tree(root)]
    first = {pid: cpu_ticks(pid) for pid in pids}
    sections = [f"=== process tree of {root} (first sample) ==="]
    sections += [describe(pid) for pid in pids]
    sections.append(host_state())
    sleep(interval_s)
    pids = [root, *tree(root)]
    sections.append(f"=== {interval_s:.0f} s later ===")
    for pid in pids:
        before, after = first.get(pid), cpu_ticks(pid)
        if before is None or after is None:
            growth = "new" if before is None and after is not None else "gone"
        else:
            busy = "busy" if after > before else "no CPU: waiting"
            growth = f"+{(after - before) / CLK_TCK:.2f} CPU-s ({busy})"
        sections.append(f"{describe(pid)}\n  cpu growth: {growth}")
    sections.append(host_state())
    for pid in pids:
        if _is_python(pid) and (dump := _py_spy(pid)):
            sections.append(dump)
    return "\n".join(sections)
