"""Run the real gateway process (``python -m gateway``) in front of an upstream, for tests.

Shared with the warm-up tests (see the handshake contract): ``run_gateway`` starts the gateway in
its own process group on a free loopback port with a private internal-token file, waits for
``/livez`` and stops the group on exit. ``mark_warm`` performs the real warm-up handshake
(GET the engine instance the gateway sees, POST "passed" for it), for tests that need a
serving gateway without running the warm-up itself.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.process import REPO, RunningServer, ServerProcess, free_port

PROFILE = REPO / "env" / "cpu.env"


@dataclass
class RunningGateway(RunningServer):
    """A gateway process plus the private dir holding its internal-token file."""

    workdir: Path

    @property
    def token_file(self) -> Path:
        return Path(self.env["GATEWAY_INTERNAL_TOKEN_FILE"])

    @property
    def internal_token(self) -> str:
        return self.token_file.read_text().strip()

    @property
    def internal_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.internal_token}"}

    def state(self) -> dict[str, object]:
        r = httpx.get(f"{self.url}/internal/warmup", headers=self.internal_headers, timeout=5)
        r.raise_for_status()
        return r.json()

    def metrics_text(self, timeout_s: float = 30.0) -> str:
        """The gateway's own /metrics page (internal token)."""
        r = httpx.get(f"{self.url}/metrics", headers=self.internal_headers, timeout=timeout_s)
        r.raise_for_status()
        return r.text

    def metric(self, sample: str, default: float | None = None) -> float:
        """One sample's value, by its exact name and labels as printed (``name`` or
        ``name{label="v"}``); ``default`` if absent (else AssertionError)."""
        for line in self.metrics_text().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
        if default is None:
            raise AssertionError(f"{sample} not in gateway metrics")
        return default

    def log_tail(self, lines: int = 40) -> str:
        return self.server.log_tail(lines)


def wait_for_instance(gw: RunningGateway, timeout_s: float = 30.0) -> str:
    """The engine instance the gateway currently sees (waits until it sees one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = gw.state()
        if state["engine_instance"] and state["state"] != "engine_down":
            return str(state["engine_instance"])
        time.sleep(0.1)
    raise TimeoutError(f"gateway never saw the engine: {gw.state()}\n{gw.log_tail()}")


def mark_warm(gw: RunningGateway, timeout_s: float = 30.0) -> str:
    """Report "passed" for the current engine instance; returns that instance."""
    instance = wait_for_instance(gw, timeout_s)
    r = httpx.post(
        f"{gw.url}/internal/warmup",
        headers=gw.internal_headers,
        json={"engine_instance": instance, "status": "passed", "step": None, "detail": None},
        timeout=5,
    )
    r.raise_for_status()
    assert r.json()["state"] == "ready", r.text
    return instance


@contextmanager
def run_gateway(
    upstream_url: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    profile: Path = PROFILE,
) -> Iterator[RunningGateway]:
    """``python -m gateway --profile cpu`` against ``upstream_url``; stopped by process group."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="gateway-") as tmp:
        workdir = Path(tmp)
        full_env = {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_UPSTREAM_URL": upstream_url,
            "GATEWAY_INTERNAL_TOKEN_FILE": str(workdir / "internal-token"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        server = ServerProcess(
            argv=[sys.executable, "-m", "gateway", "--profile", str(profile)],
            env=full_env,
            ready_url=f"http://127.0.0.1:{port}/livez",
            log_path=workdir / "gateway.log",
        )
        server.start(timeout_s=30.0)
        try:
            yield RunningGateway(server=server, port=port, env=full_env, workdir=workdir)
        finally:
            server.stop(grace_s=5.0)
