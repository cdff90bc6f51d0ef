"""The compose smoke test: `make up` (cpu) -> /health 200 -> a chat completion through the
gateway -> `make down` leaves no container. Plus the failure path of `make up`.

Runs the real images and a real containerised CPU engine, on free loopback ports, in a compose
project of its own (never the developer's `gemma4` project, never ports 8000/8080). Skips with
the reason when no Docker engine answers; under CI (any non-empty value) it fails instead.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.compose.docker import engine_problem, require
from tests.support.process import REPO, free_port
from tests.support.stack import chat_once

pytestmark = [pytest.mark.docker, pytest.mark.slow]

UP_TIMEOUT_S = 600  # `make up`'s own bound (engine start + warm-up); images prebuilt in CI
BUILD_SLACK_S = 900  # a cold image build on 2 cores, when CI did not prebuild


@dataclass
class Stack:
    project: str
    gateway_port: int
    engine_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def make(self, *targets: str, timeout: float, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PROJECT": self.project,
            "ENGINE_PORT": str(self.engine_port),
            "GATEWAY_PORT": str(self.gateway_port),
            "STACK_GATEWAY_HOST": "127.0.0.1",
            "UP_TIMEOUT": str(UP_TIMEOUT_S),
            **extra,
        }
        env.pop("MAKEFLAGS", None)
        return subprocess.run(
            ["make", "--no-print-directory", *targets],
            capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO, env=env,
        )  # fmt: skip

    def containers(self) -> list[str]:
        return _docker(
            "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}"
        )

    def purge(self) -> None:
        """Remove whatever the project left (containers, then its volumes)."""
        ids = self.containers()
        if ids:
            _docker("rm", "-f", *ids)
        vols = _docker(
            "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}"
        )
        if vols:
            _docker("volume", "rm", "-f", *vols)


def _docker(*args: str) -> list[str]:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False
    )
    return done.stdout.split()


def _tail(done: subprocess.CompletedProcess[str], lines: int = 60) -> str:
    return "\n".join((done.stdout + done.stderr).splitlines()[-lines:])


@pytest.fixture
def stack() -> Iterator[Stack]:
    require(engine_problem())
    s = Stack(f"gemma4-smoke-{uuid.uuid4().hex[:8]}", free_port(), free_port())
    try:
        yield s
    finally:
        s.purge()


@pytest.mark.timeout(UP_TIMEOUT_S + BUILD_SLACK_S + 300)
def test_up_chat_down(stack: Stack) -> None:
    up = stack.make("up", timeout=UP_TIMEOUT_S + BUILD_SLACK_S)
    try:
        assert up.returncode == 0, f"make up failed:\n{_tail(up)}"
        assert "stack ready" in up.stdout

        health = httpx.get(f"{stack.url}/health", timeout=10)
        assert health.status_code == 200, health.text
        chat_once(stack.url)
        # The engine port is loopback-only and distinct from the gateway's.
        assert (
            httpx.get(f"http://127.0.0.1:{stack.engine_port}/health", timeout=5).status_code == 200
        )
    finally:
        down = stack.make("down", timeout=180)
    assert down.returncode == 0, _tail(down)
    assert stack.containers() == [], "make down left containers behind"


@pytest.mark.timeout(BUILD_SLACK_S + 300)
def test_up_fails_with_reason_and_engine_log(stack: Stack, tmp_path: Path) -> None:
    """A profile the preflight rejects: `make up` fails fast, says why, shows the engine log."""
    broken = tmp_path / "broken.env"
    text = (REPO / "env" / "cpu.env").read_text()
    broken.write_text(text + "\nENGINE_BLOCK_SIZE=16\n")  # CPU needs a multiple of 32
    up = stack.make("up", timeout=BUILD_SLACK_S, PROFILE=str(broken))
    try:
        out = up.stdout + up.stderr
        assert up.returncode != 0, out[-3000:]
        assert "up: FAILED" in out
        assert "engine container" in out  # the reason: exited / restarted
        assert "engine log lines" in out
        assert "block" in out.lower(), "the engine's own error (preflight) must be shown"
    finally:
        stack.make("down", timeout=180, PROFILE=str(broken))
