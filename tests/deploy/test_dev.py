"""`make dev` (deploy.dev): roles come up, the gateway turns ready, Ctrl-C leaves no process.

Two runs of ``python -m deploy.dev`` (what ``make dev`` execs): one exactly as a developer gets it,
starting its own engine (the real vLLM CPU engine, whose EngineCore and workers live in process
groups of their own: the orphan case that matters), and one with ``--engine-url`` against the
session's engine, which must be left running. Ctrl-C is delivered as a terminal does: SIGINT to
the foreground process group.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from entrypoint.process import descendants
from tests.support.process import ServerProcess, free_port
from tests.support.stack import chat_once

pytestmark = pytest.mark.engine

READY_S = 420  # engine start (40-150 s on 2 shared cores) + warm-up


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _dev(tmp_path: Path, gateway_port: int, *args: str, **env: str) -> ServerProcess:
    """``python -m deploy.dev --profile cpu ARGS``, ready when the gateway's /health is 200."""
    return ServerProcess(
        argv=[sys.executable, "-m", "deploy.dev", "--profile", "cpu", *args],
        env={
            "GATEWAY_PORT": str(gateway_port),
            "GATEWAY_INTERNAL_TOKEN_FILE": str(tmp_path / "internal-token"),
            "WARMUP_REPORT_PATH": str(tmp_path / "report.json"),
            "CACHE_HOT_DIR": str(tmp_path / "hot"),
            "CACHE_PERSIST_DIR": str(tmp_path / "persist"),
            **env,
        },
        ready_url=f"http://127.0.0.1:{gateway_port}/health",
        log_path=tmp_path / "dev.log",
    )


def _ctrl_c_stops_everything(dev: ServerProcess, gateway_port: int) -> str:
    """Ctrl-C the ready stack; assert a clean exit and no surviving role process. Returns log."""
    # The one-shot warm-up may already have exited (it reports "passed", which turns /health
    # green, then saves the compile cache and ends): the gateway at least is still running.
    children = descendants(dev.pid)
    assert children, "dev started no role processes"
    os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in a terminal delivers
    assert dev.proc is not None
    assert dev.proc.wait(timeout=90) == 0, dev.log_tail()
    leftovers = [pid for pid in children if _alive(pid)]
    assert leftovers == [], f"orphans after Ctrl-C: {leftovers}\n{dev.log_tail()}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{gateway_port}/livez", timeout=3)
    log = dev.log_path.read_text(errors="replace")
    assert "all roles stopped" in log
    return log


@pytest.mark.slow
@pytest.mark.timeout(READY_S + 180)
def test_make_dev_starts_its_engine_and_ctrl_c_stops_all(tiny_model: None, tmp_path: Path) -> None:
    gateway_port, engine_port = free_port(), free_port()
    dev = _dev(tmp_path, gateway_port, ENGINE_PORT=str(engine_port))
    try:
        dev.start(timeout_s=READY_S)
        chat_once(f"http://127.0.0.1:{gateway_port}")
        # The engine and its vLLM children (API server, EngineCore) are among the descendants.
        assert len(descendants(dev.pid)) >= 4

        log = _ctrl_c_stops_everything(dev, gateway_port)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{engine_port}/health", timeout=3)
        # The gateway's 200 already proves the warm-up passed; dev started it itself.
        assert "started warmup" in log
    finally:
        dev.stop()


@pytest.mark.timeout(300)
def test_dev_with_engine_url_leaves_the_engine_alone(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gateway_port = free_port()
    dev = _dev(tmp_path, gateway_port, "--engine-url", engine.url)
    try:
        dev.start(timeout_s=200)
        log = _ctrl_c_stops_everything(dev, gateway_port)
        assert "started gateway" in log and "started warmup" in log
        assert "started engine" not in log
        assert httpx.get(f"{engine.url}/health", timeout=5).status_code == 200, (
            "an external engine must be left alone"
        )
    finally:
        dev.stop()
