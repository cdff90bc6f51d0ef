"""A real ``redis-server`` for tests: a private instance on a free loopback port, no disk.

Started as a session leader (``--save '' --appendonly no``: nothing persisted, a restart comes
back empty, which is what the failure tests need), waited for with PING and a deadline, and
stopped by process group. ``stop()`` then ``start()`` again reuses the port, so gateways
configured with its URL see "Redis went away and came back empty". Under CI a missing
``redis-server`` fails the test (``.ci/install-redis.sh`` installs it); elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import free_port


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server not on PATH (Debian: apt-get install redis-server)"
        if os.environ.get("CI", "").strip():
            pytest.fail(message + "; .ci/install-redis.sh installs it", pytrace=False)
        pytest.skip(message)
    return path


@dataclass
class RedisServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # more of redis-server's options (TLS)

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of database ``db``: a fleet of its own (gateways on different databases
        share nothing: leases, ledger leadership, warm-up records)."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        argv = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir), *self.args,
        ]  # fmt: skip
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {self.log()}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server on {self.port} not answering PING: {self.log()}")

    def flush(self) -> None:
        """Empty every database (``FLUSHALL``): what earlier tests left is gone."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as s:
            s.sendall(b"FLUSHALL\r\n")
            answer = s.recv(64)
        if not answer.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL on {self.port}: {answer!r}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGKILL the group (no persistence: nothing to flush) and wait for it to be gone: a
        port that still answers PING after ``timeout_s`` fails loudly (``AssertionError``)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        deadline = time.monotonic() + timeout_s
        while self.ping():  # a later start on this port must never meet a previous server
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"redis-server stopped, but 127.0.0.1:{self.port} still answers PING "
                    f"after {timeout_s:g} s"
                )
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


class Admin:
    """The few Redis commands the state tests read and write, over a gateway's own connection
    (``SharedState._redis``, a ``gateway.state.resp.RespClient``): no second client to close."""

    def __init__(self, state: Any) -> None:
        self.resp = state._redis

    async def execute_command(self, *args: object) -> Any:
        return await self.resp.execute(*args)

    async def flushdb(self) -> None:
        await self.resp.execute("FLUSHDB")

    async def get(self, key: str) -> str | None:
        return await self.resp.execute("GET", key)  # type: ignore[no-any-return]

    async def zcard(self, key: str) -> int:
        return int(await self.resp.execute("ZCARD", key))

    async def zscore(self, key: str, member: str) -> float | None:
        score = await self.resp.execute("ZSCORE", key, member)
        return None if score is None else float(score)

    async def zrange(self, key: str, start: int, stop: int, withscores: bool = False) -> list[Any]:
        flat = await self.resp.execute("ZRANGE", key, start, stop, *(["WITHSCORES"] * withscores))
        if not withscores:
            return list(flat)
        return [(m, float(s)) for m, s in zip(flat[::2], flat[1::2], strict=True)]

    async def hgetall(self, key: str) -> dict[str, str]:
        flat = await self.resp.execute("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def time(self) -> tuple[int, int]:
        sec, usec = await self.resp.execute("TIME")
        return int(sec), int(usec)
