"""The parent of ``GATEWAY_WORKERS`` worker processes: start, restart, forward, drain.

It serves nothing itself (a crash in the request path can only take one worker down) and holds
the port: it binds it first (``SO_REUSEPORT``, never listening: it takes no connections) so a
port already in use is one clear line before any worker starts, and no other program can take
the port while a worker restarts.

- A worker that exits while the gateway is not stopping is logged (its status or signal) and
  started again after ``Backoff.delay`` (doubling from 0.5 s to 30 s while workers keep dying
  young; reset by one that lived ``Backoff.stable_s``).
- SIGTERM: forwarded to every worker once; each drains (``gateway/edge/drain.py``); the parent exits
  0 when every worker exited 0, else 1. A second SIGTERM, or SIGINT, is forwarded too (workers
  then stop at once). SIGHUP is forwarded (each worker reloads the keys file).
- Workers run in their own process group so that a signal to the parent's group (a terminal's
  Ctrl-C, a test's ``killpg``) reaches each worker once, through the parent; a worker whose
  parent disappeared (SIGKILL) drains by itself (``worker.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("gateway.workers")

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class Backoff:
    """How long to wait before restarting a worker that died (pure: times are passed in)."""

    first_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 30.0  # a worker that lived this long resets the doubling
    failures: int = 0

    def delay(self, lived_s: float) -> float:
        """The wait before the next start, given how long the dead worker lived."""
        self.failures = 1 if lived_s >= self.stable_s else self.failures + 1
        return min(self.max_s, self.first_s * 2 ** (self.failures - 1))


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = None
    backoff: Backoff = field(default_factory=Backoff)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with ``SO_REUSEPORT`` (not listening); OSError if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    """Runs ``argv(index, peers_dir)`` N times and keeps N running until SIGTERM."""

    def __init__(
        self,
        workers: int,
        argv: Callable[[int, str], Sequence[str]],
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 0.1,
    ) -> None:
        self.workers = [_Worker(i) for i in range(workers)]
        self.argv = argv
        self.clock = clock
        self.tick_s = tick_s
        self.stopping = False
        self._signals: list[int] = []

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)  # handled in the loop, not in the handler

    def run(self) -> int:
        peers = tempfile.mkdtemp(prefix="gateway-workers-")
        previous = {s: signal.signal(s, self._on_signal) for s in FORWARDED}
        try:
            for w in self.workers:
                self._start(w, peers)
            log.info("supervisor %d: %d workers", os.getpid(), len(self.workers))
            return self._loop(peers)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for w in self.workers:  # only on an unexpected error: never orphan a worker
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait()
            shutil.rmtree(peers, ignore_errors=True)

    def _loop(self, peers: str) -> int:
        failed = False
        while True:
            while self._signals:
                self._forward(self._signals.pop(0))
            now = self.clock()
            for w in self.workers:
                if w.proc is not None and (code := w.proc.poll()) is not None:
                    w.proc = None
                    if self.stopping:
                        failed |= code != 0
                        log.info("worker %d exited (%s)", w.index, _status(code))
                        continue
                    wait = w.backoff.delay(now - w.started)
                    w.restart_at = now + wait
                    log.error("worker %d died (%s) after %.1f s: restarting in %g s",
                              w.index, _status(code), now - w.started, wait)  # fmt: skip
                due = w.restart_at is not None and now >= w.restart_at
                if w.proc is None and due and not self.stopping:
                    self._start(w, peers)
            if self.stopping and all(w.proc is None for w in self.workers):
                log.info("all workers exited: supervisor done")
                return 1 if failed else 0
            time.sleep(self.tick_s)

    def _start(self, w: _Worker, peers: str) -> None:
        w.restart_at = None
        w.started = self.clock()
        w.proc = subprocess.Popen(list(self.argv(w.index, peers)), process_group=0)
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _forward(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                log.info("%s: stopping %d workers", signal.Signals(sig).name,
                         sum(1 for w in self.workers if w.proc is not None))  # fmt: skip
            self.stopping = True
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"
