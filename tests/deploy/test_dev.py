"""`make dev` (deploy.dev): roles come up, the gateway turns ready, Ctrl-C leaves no process.

Uses the session's real engine through ``--engine-url`` (no second vLLM on a 2-core machine);
the supervisor code that stops a self-started engine is the same Role.stop used here for the
gateway and the warm-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.dev import descendants
from tests.support.process import REPO, free_port

pytestmark = pytest.mark.engine


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(300)
def test_dev_ready_then_ctrl_c_stops_everything(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_INTERNAL_TOKEN_FILE": str(tmp_path / "internal-token"),
        "WARMUP_REPORT_PATH": str(tmp_path / "report.json"),
        "CACHE_HOT_DIR": str(tmp_path / "hot"),
        "CACHE_PERSIST_DIR": str(tmp_path / "persist"),
    }
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        [sys.executable, "-m", "deploy.dev", "--profile", "cpu", "--engine-url", engine.url],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 200
        ready = False
        while time.monotonic() < deadline and dev.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health", timeout=3).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(1)
        output = (tmp_path / "dev.log").read_text(errors="replace")
        assert ready, f"gateway never turned ready:\n{output[-3000:]}"
        children = descendants(dev.pid)
        assert children, "dev started no role processes"

        os.kill(dev.pid, signal.SIGINT)  # what Ctrl-C delivers to the foreground process
        assert dev.wait(timeout=60) == 0
        time.sleep(0.5)
        leftovers = [pid for pid in children if _alive(pid)]
        assert leftovers == [], f"orphans after Ctrl-C: {leftovers}"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/livez", timeout=3)
        assert httpx.get(f"{engine.url}/health", timeout=5).status_code == 200, (
            "an external engine must be left alone"
        )
        output = (tmp_path / "dev.log").read_text(errors="replace")
        assert "all roles stopped" in output
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(timeout=10)
        log.close()
