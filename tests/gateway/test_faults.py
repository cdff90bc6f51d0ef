"""Engine killed mid-stream: terminal SSE error, /health 503 within 5 s, 503 for new requests,
and service resumes after the restarted engine is warmed, without restarting the gateway.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.engine import start_engine
from tests.support.gateway import RunningGateway, mark_warm, run_gateway, wait_for_instance
from tests.support.process import ServerProcess, free_port

CHAT = {"model": "gemma-4-tiny", "messages": [{"role": "user", "content": "go"}], "stream": True}


def synthetic_upstream(tmp_path: Path) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        argv=[sys.executable, "-m", "tests.gateway.synthetic_upstream", "--port", str(port)],
        env={},
        ready_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp_path / "upstream.log",
    )


def child_group(pid: int) -> int:
    """The process group of ``pid``'s child: the entrypoint runs vLLM in a group of its own, so
    killing the entrypoint's group alone would orphan the engine instead of crashing it."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                return int(fields[2])
    raise AssertionError(f"process {pid} has no child")


def stream_then_kill(
    gw: RunningGateway, pgid: int, body: dict, after_events: int = 3
) -> tuple[list, float]:
    """Stream, SIGKILL the upstream's process group after a few events, read to the end."""
    events: list[str] = []
    killed_at = 0.0
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == after_events:
                os.killpg(pgid, signal.SIGKILL)
                killed_at = time.monotonic()
    return events, killed_at


def assert_terminal_error(events: list[str]) -> None:
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] in ("engine_connection_lost", "engine_down")


def wait_health_503(gw: RunningGateway, since: float, limit_s: float = 5.0) -> float:
    while time.monotonic() - since < limit_s + 1:
        r = httpx.get(f"{gw.url}/health", timeout=2)
        if r.status_code == 503:
            assert r.json()["status"] == "engine_down" and "retry-after" in r.headers
            return time.monotonic() - since
        time.sleep(0.1)
    raise AssertionError("gateway /health still 200 after the engine died")


def test_synthetic_upstream_killed_mid_stream_and_recovery(tmp_path: Path) -> None:
    upstream = synthetic_upstream(tmp_path).start(timeout_s=30)
    try:
        url = upstream.ready_url.rsplit("/", 1)[0]
        with run_gateway(url, env={"GATEWAY_HEALTH_POLL_S": "1"}) as gw:
            first = mark_warm(gw)
            events, killed_at = stream_then_kill(gw, upstream.pid, {**CHAT, "max_tokens": 200})
            assert_terminal_error(events)
            took = wait_health_503(gw, killed_at)
            assert took <= 5.0
            r = httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "max_tokens": 4})
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "engine_down"

            upstream.stop()
            upstream.start(timeout_s=30)  # same port, new process: a new engine instance
            second = wait_for_instance(gw)
            assert second != first
            assert httpx.get(f"{gw.url}/health").json()["status"] == "warming_up"
            mark_warm(gw)
            with httpx.stream(
                "POST", f"{gw.url}/v1/chat/completions", json={**CHAT, "max_tokens": 5}
            ) as r:
                assert r.status_code == 200
                lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
            assert lines[-1] == "data: [DONE]" and len(lines) == 6
    finally:
        upstream.stop()


@pytest.mark.engine
@pytest.mark.slow
def test_real_engine_killed_mid_stream(tmp_path: Path, tiny_model: None) -> None:
    """The same with a second real engine (never the shared one), started only for this test."""
    eng = start_engine(tmp_path)
    try:
        with run_gateway(eng.url, env={"GATEWAY_HEALTH_POLL_S": "1"}) as gw:
            mark_warm(gw)
            body = {**CHAT, "max_tokens": 1900, "ignore_eos": True}
            # Kill at the first event: a fast engine could otherwise finish before the kill.
            vllm = child_group(eng.pid)  # the engine itself, as in a crash (OOM kill)
            events, killed_at = stream_then_kill(gw, vllm, body, after_events=1)
            assert_terminal_error(events)
            assert wait_health_503(gw, killed_at) <= 5.0
    finally:
        eng.stop()
