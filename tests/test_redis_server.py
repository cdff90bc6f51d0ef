"""``tests.support.redis.RedisServer.stop``: the port is silent afterwards, or the stop fails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import free_port
from tests.support.redis import RedisServer, redis_server_binary
from tests.support.wait import wait_until

# Answers every connection's first read with +PONG, as a Redis left on the port would.
PONG = """
import socket, sys, time
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
srv.settimeout(1.0)
end = time.monotonic() + 60
while time.monotonic() < end:
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        continue
    with conn:
        conn.recv(64)
        conn.sendall(b"+PONG\\r\\n")
"""


def _sleeper() -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    return subprocess.Popen(argv, start_new_session=True)


@pytest.mark.redis
def test_a_stopped_redis_no_longer_answers(tmp_path: Path) -> None:
    redis_server_binary()  # skips (or fails under CI) without redis-server
    server = RedisServer(tmp_path).start()
    assert server.ping()
    server.stop()
    assert server.proc is None and not server.ping()


def _command(server: RedisServer, line: bytes) -> bytes:
    """One inline command on its own connection, its answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(line + b"\r\n")
        return s.recv(64)


@pytest.mark.redis
def test_flush_empties_what_an_earlier_test_left(tmp_path: Path) -> None:
    """The gateway modules' ``redis_server`` starts each module from an empty store."""
    redis_server_binary()
    server = RedisServer(tmp_path).start()
    try:
        assert _command(server, b"SET gw:rl:rpm10/requests 1") == b"+OK\r\n"
        assert _command(server, b"DBSIZE") == b":1\r\n"
        server.flush()
        assert _command(server, b"DBSIZE") == b":0\r\n"
    finally:
        server.stop()


def test_a_port_that_still_answers_ping_after_the_stop_fails_it(tmp_path: Path) -> None:
    """Something outside the stopped group still answers on the port: a later start there
    would meet it, so the stop fails and says so instead of returning."""
    port = free_port()
    survivor = subprocess.Popen([sys.executable, "-c", PONG, str(port)], start_new_session=True)
    try:
        server = RedisServer(tmp_path, port=port, proc=_sleeper())
        wait_until(server.ping, f"the stand-in answering PING on {port}", 30, interval_s=0.05)
        with pytest.raises(AssertionError, match=f"127.0.0.1:{port} still answers PING"):
            server.stop(timeout_s=0.5)
        assert server.proc is None, "its own group was stopped all the same"
    finally:
        os.killpg(survivor.pid, signal.SIGKILL)
        survivor.wait(timeout=10)
