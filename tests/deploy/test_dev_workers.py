"""``make dev WORKERS=2`` without an engine (``--engine-url`` of nothing: the gateway and its
workers need none to start): the local redis-server comes up first, both workers answer one
``/metrics`` scrape, and SIGTERM stops every process (workers, supervisor, Redis) with status
0; without ``redis-server`` on PATH it says what to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from protocol.prometheus import samples
from tests.support.process import REPO, ServerProcess, free_port
from tests.support.redis import redis_server_binary
from tests.support.wait import wait_until

pytestmark = pytest.mark.redis


def dev_argv(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "deploy.dev", "--profile", "cpu", "--engine-url",
            "http://127.0.0.1:9", "--workers", "2", "--run-dir", str(run_dir)]  # fmt: skip


def test_two_workers_with_their_redis_come_up_and_stop_together(tmp_path: Path) -> None:
    redis_server_binary()  # skips (or fails under CI) without it
    port = free_port()
    token = tmp_path / "token"
    env = {"GATEWAY_PORT": str(port), "STATE_PORT": str(free_port()),
           "GATEWAY_INTERNAL_TOKEN_FILE": str(token), "GATEWAY_STATE_LEASE_TTL_S": "3"}  # fmt: skip
    dev = ServerProcess(dev_argv(tmp_path / "run"), env, f"http://127.0.0.1:{port}/livez",
                        tmp_path / "dev.log").start(timeout_s=120)  # fmt: skip
    try:

        def both_up() -> bool:
            page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                             headers={"Authorization": f"Bearer {token.read_text().strip()}"})  # fmt: skip
            up = {lab["worker"]: v for lab, v in samples(page.text, "gateway_worker_up")}
            return up == {"0": 1.0, "1": 1.0}

        wait_until(both_up, "both workers on one scrape", 60)
        assert (tmp_path / "run" / "state-url").stat().st_mode & 0o777 == 0o600
    finally:
        code = dev.stop(grace_s=30)
    log = dev.log_tail(80)
    assert code == 0, log
    assert "shared state for 2 gateway workers" in log and "all workers exited" in log, log


def test_without_redis_it_says_what_to_install(tmp_path: Path) -> None:
    path = ":".join(p for p in os.environ["PATH"].split(":")
                    if not (Path(p) / "redis-server").exists())  # fmt: skip
    done = subprocess.run(
        dev_argv(tmp_path / "run"), cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": path, "GATEWAY_PORT": str(free_port())},
    )  # fmt: skip
    assert done.returncode == 1
    assert "needs redis-server on PATH" in done.stdout + done.stderr
    assert "apt-get install redis-server" in done.stdout + done.stderr
