"""The compose stack's ``state`` service (``deploy/state_server.py``) run for real, without
Docker: it writes a URL file with a generated password (mode 0600), starts Debian's
``redis-server`` on loopback with persistence off and no eviction, refuses a client without the
password, and keeps the password across a restart (the gateway's file stays valid)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from deploy.state_server import ensure_url, redis_conf
from tests.support.process import REPO, free_port
from tests.support.redis import redis_server_binary
from tests.support.wait import wait_until

pytestmark = pytest.mark.redis


def test_the_url_file_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "url"
    url = ensure_url(path, 6380)
    assert url.startswith("redis://:") and url.endswith("@127.0.0.1:6380/0")
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_url(path, 6380) == url  # a restarted container keeps the password
    assert ensure_url(path, 6390) != url  # another port: a new URL
    conf = redis_conf(url, tmp_path)
    assert "bind 127.0.0.1" in conf and 'save ""' in conf and "appendonly no" in conf
    assert "maxmemory-policy noeviction" in conf


def test_the_service_serves_only_with_its_password(tmp_path: Path) -> None:
    bin_dir = Path(redis_server_binary()).parent
    port = free_port()
    url_file = tmp_path / "url"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "deploy" / "state_server.py"), str(url_file)],
        env={**os.environ, "STATE_PORT": str(port), "STATE_DIR": str(tmp_path),
             "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        url = wait_until(lambda: url_file.exists() and url_file.read_text().strip(), "URL", 10)
        client = redis.Redis.from_url(url, socket_timeout=2)
        wait_until(lambda: _pings(client), "redis-server answering", 10)
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        # Raw RESP, not a client (a client retries an auth error for seconds): without the
        # password nothing is served, a guessed one is refused.
        assert _say(port, b"SET x 1\r\n").startswith(b"-NOAUTH")
        assert _say(port, b"AUTH guess\r\n").startswith(b"-WRONGPASS")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _say(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        return sock.recv(256)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
