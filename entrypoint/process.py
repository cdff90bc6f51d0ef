"""Run vLLM in its own process group and forward signals to the whole group.

``vllm serve`` forks an EngineCore and workers; SIGKILL of the API server alone orphans them
(seen with vLLM 0.32 on CPU: the children are separate processes that outlive their parent,
while a SIGTERM to the whole group stops all of them in about 2 s). Starting it as a session
leader and signalling the group means a
``docker stop``, a Ctrl-C or a test teardown never leaves a child holding memory or a port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

# What the engine gets after SIGTERM beyond its own drain (``ENGINE_SHUTDOWN_TIMEOUT_S``): the
# teardown of a vLLM CPU engine takes ~2 s, a TPU engine's a few more.
STOP_GRACE_S = 10.0


def stop_grace_s(shutdown_timeout_s: float) -> float:
    """How long the launcher waits after SIGTERM before its SIGKILL: the engine's drain window
    (vLLM ``--shutdown-timeout``) plus ``STOP_GRACE_S`` for the teardown after it."""
    return max(0.0, shutdown_timeout_s) + STOP_GRACE_S


# The kept log is for the start-up lines; past this the file stops growing (it may live on a
# tmpfs volume: the compile-cache dir under compose) while the console still gets every byte.
LOG_FILE_MAX_BYTES = 64 * 1024 * 1024


def signal_group(pgid: int, sig: int) -> None:
    """Signal a process group, ignoring one that is already gone (or was reused by another user)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL whatever is left."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        return proc.wait()
    finally:
        signal_group(proc.pid, signal.SIGKILL)  # stragglers that outlived their parent


def _tee(src: IO[bytes], log_path: Path, header: str) -> None:
    """Copy the engine's output to our stdout and to ``log_path`` (truncated: one start per file)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = sys.stdout.buffer
    with log_path.open("wb") as log:
        log.write(header.encode())
        log.flush()
        kept = len(header)
        for chunk in iter(lambda: src.read1(65536), b""):
            sinks = (out, log) if kept < LOG_FILE_MAX_BYTES else (out,)
            kept += len(chunk)
            for sink in sinks:
                with contextlib.suppress(OSError, ValueError):
                    sink.write(chunk)
                    sink.flush()


def run_group(
    argv: Sequence[str],
    env: Mapping[str, str],
    grace_s: float = STOP_GRACE_S,
    log_path: Path | None = None,
    log_header: str = "",
) -> int:
    """Run ``argv`` as a new session; forward SIGTERM/SIGINT/SIGHUP to its group; return its code.

    With ``log_path`` the engine's stdout and stderr (merged) also go to that file, so the start-up
    lines (KV cache size, maximum concurrency, TPU HBM) can be read back later (the ops server's
    memory layout), after ``log_header`` (the launcher's own lines: the command, the compile
    cache); the console/container log still gets every byte."""
    tee = subprocess.PIPE if log_path is not None else None
    proc = subprocess.Popen(
        list(argv),
        env=dict(env),
        start_new_session=True,
        stdout=tee,
        stderr=subprocess.STDOUT if tee else None,
    )
    copier = None
    if log_path is not None and proc.stdout is not None:
        copier = threading.Thread(
            target=_tee, args=(proc.stdout, log_path, log_header), daemon=True
        )
        copier.start()
    stopping = threading.Event()

    def forward(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        print(
            f"entrypoint: got signal {signum}, stopping vLLM process group {proc.pid}",
            file=sys.stderr,
            flush=True,
        )
        threading.Thread(target=stop_group, args=(proc, grace_s), daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = proc.wait()
    # The API server exited on its own (e.g. the engine died): take its children with it.
    signal_group(proc.pid, signal.SIGKILL)
    if copier is not None:
        copier.join(timeout=5.0)  # the group is gone, so the pipe reaches EOF
    return 0 if stopping.is_set() and code in (0, -signal.SIGTERM, -signal.SIGINT) else code


# --- /proc views, for stopping a whole tree and for orphan checks (Linux) ---------------------


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def groups_of(pids: Iterable[int]) -> set[int]:
    """The process groups of ``pids`` that are still alive (a role's children may lead their own)."""
    return {int(f[2]) for f in map(_stat, pids) if f}


# include/linux/sched.h: set on a task once it is in do_exit(), i.e. past the point of no return.
PF_EXITING = 0x4
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)  # its bit in /proc/PID/status's SigPnd and ShdPnd


def dying(pid: int) -> bool:
    """Whether ``pid`` is gone or on its way out: in the kernel's exit path (``PF_EXITING``, the
    stat file's flags), or with a SIGKILL pending that a syscall in progress has not let it
    take yet. Why: a killed process with a large address space, or one blocked in the kernel
    (``D``), stays in /proc for a while on a loaded machine; an orphan check must tell that
    apart from a process that survived."""
    fields = _stat(pid)
    if fields is None or fields[0] in "ZX" or int(fields[6]) & PF_EXITING:
        return True
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return True
    pending = (ln.split()[1] for ln in status.splitlines() if ln.startswith(("SigPnd", "ShdPnd")))
    return any(int(mask, 16) & _SIGKILL_BIT for mask in pending)


def describe(pid: int) -> str:
    """One line on a process for a failure message: state, flags, where it sleeps, its command."""
    proc = Path("/proc") / str(pid)
    fields = _stat(pid)
    if fields is None:
        return f"{pid}: gone"
    parts = [f"{pid}: state {fields[0]}, flags {int(fields[6]):#x}"]
    for name in ("wchan", "cmdline"):
        with contextlib.suppress(OSError):
            parts.append(f"{name} {(proc / name).read_text().replace(chr(0), ' ').strip()[:120]}")
    return ", ".join(parts)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) PIDs in a process group: what an orphan check looks for."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and (fields := _stat(entry.name))
        and int(fields[2]) == pgid
        and fields[0] != "Z"
    ]
