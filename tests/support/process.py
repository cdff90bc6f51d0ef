"""Start a real server process for a test, wait until it answers, stop it by process group.

Every process a test starts is a session leader bound to 127.0.0.1 on a free port, waited for
with a deadline, and stopped with SIGTERM then SIGKILL to its whole group: no test leaves an
EngineCore or worker behind, and nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from entrypoint.process import descendants, groups_of

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A server started in its own process group, with its log on disk."""

    argv: Sequence[str]
    env: Mapping[str, str]
    ready_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout_s: float = 240.0) -> ServerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(self.argv), env={**os.environ, **self.env}, cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[:4]} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.ready_url, timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{self.ready_url} not ready after {timeout_s}s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM the group, then SIGKILL after ``grace_s``. Returns the exit code.

        Groups the server made for its own children (the entrypoint runs vLLM as a session
        leader) are SIGKILLed at the end too, so even a failed graceful stop orphans nothing.
        """
        if self.proc is None:
            return None
        groups = groups_of(descendants(self.proc.pid))
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        for pgid in {self.proc.pid, *groups}:  # children that outlived the leader
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class RunningServer:
    """A started loopback server as tests see it: its process, port, URL and environment."""

    server: ServerProcess
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.server.pid
