"""Faults on either side of a stream.

Engine killed mid-stream: terminal SSE error, then /health 503 (waited for, not timed), 503 for
new requests, and
service resumes after the restarted engine is warmed, without restarting the gateway. Client gone
mid-stream: the upstream request is cancelled. The synthetic upstream (``python -m bench
synthetic``) is what a test can SIGKILL cheaply and count live streams on exactly; the kill is
also run against a second real engine (``slow``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from protocol.prometheus import metric_sum
from tests.support.engine import Engine, running_after
from tests.support.gateway import RunningGateway, mark_warm, run_gateway, wait_for_instance
from tests.support.process import ServerProcess, free_port
from tests.support.sse import error_events
from tests.support.wait import wait_until

CHAT = {"model": "gemma-4-tiny", "messages": [{"role": "user", "content": "go"}], "stream": True}


def synthetic_upstream(tmp_path: Path) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        argv=[
            *(sys.executable, "-m", "bench", "synthetic", "--port", str(port)),
            *("--model", "gemma-4-tiny", "--itl-ms", "50"),
        ],
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


def stream_then_kill(gw: RunningGateway, pgid: int, body: dict, after_events: int = 3) -> list:
    """Stream, SIGKILL the upstream's process group after a few events, read to the end."""
    events: list[str] = []
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == after_events:
                os.killpg(pgid, signal.SIGKILL)
    assert len(events) > after_events, events  # killed mid-stream, then the terminal events
    return events


def assert_terminal_error(events: list[str]) -> None:
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] in ("engine_connection_lost", "engine_down")


def wait_health_503(gw: RunningGateway, limit_s: float = 60.0) -> None:
    """Wait for /health to say engine_down. The bound only stops a hang: how fast the gateway
    notices (one health poll, or at once when the proxy pokes the monitor) is not asserted on
    a shared 2-core box, and a /health answer slower than its timeout is "not yet"."""

    def down() -> tuple[dict, httpx.Headers] | None:
        r = httpx.get(f"{gw.url}/health", timeout=2)
        return (r.json(), r.headers) if r.status_code == 503 else None

    doc, headers = wait_until(down, "/health 503 after the engine died", limit_s, 0.1)
    assert doc["status"] == "engine_down" and "retry-after" in headers


def assert_new_requests_503(gw: RunningGateway) -> None:
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "max_tokens": 4}, timeout=10)
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "engine_down"


def assert_serves_again(gw: RunningGateway, first_instance: str) -> list[str]:
    """The restarted upstream is a new instance, held at warming_up until warm-up passes."""
    second = wait_for_instance(gw, timeout_s=60)
    assert second != first_instance
    assert httpx.get(f"{gw.url}/health").json()["status"] == "warming_up"
    mark_warm(gw)
    with httpx.stream(
        "POST", f"{gw.url}/v1/chat/completions", json={**CHAT, "max_tokens": 5}, timeout=60
    ) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and not error_events(lines)
    return lines


def upstream_metric(url: str, name: str) -> float:
    value = metric_sum(httpx.get(f"{url}/metrics", timeout=30).text, name)
    assert value is not None, f"{name} not in {url}/metrics"
    return value


def test_client_disconnect_mid_stream_cancels_the_upstream_stream(tmp_path: Path) -> None:
    """The gateway closes its upstream request as soon as the client goes: the upstream's live
    stream count drops to 0 before it ran out of chunks. (Against the real engine:
    test_admission_e2e, which counts the tokens the engine generated.)"""
    upstream = synthetic_upstream(tmp_path).start(timeout_s=30)
    try:
        url = upstream.ready_url.rsplit("/", 1)[0]
        with run_gateway(url) as gw:
            mark_warm(gw)
            body = {**CHAT, "max_tokens": 1000}  # 50 s at 50 ms per token
            with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as r:
                got = 0
                for line in r.iter_lines():
                    got += line.startswith("data: {")
                    if got == 3:
                        assert upstream_metric(url, "vllm:num_requests_running") == 1
                        break
            wait_until(  # the bound stops a hang, it is not a timing claim
                lambda: upstream_metric(url, "vllm:num_requests_running") == 0,
                "upstream stream cancelled", 30, 0.05,
            )  # fmt: skip
            # The upstream saw its stream end (running 0) long before its 1,000 chunks: the
            # gateway closed it, the stream did not run out.
            assert upstream_metric(url, "synthetic_chunks_total") < 1000
            assert gw.metric('gateway_client_disconnects_total{phase="upstream"}') == 1
            assert gw.metric("gateway_inflight") == 0
    finally:
        upstream.stop()


def test_synthetic_upstream_killed_mid_stream_and_recovery(tmp_path: Path) -> None:
    upstream = synthetic_upstream(tmp_path).start(timeout_s=30)
    try:
        url = upstream.ready_url.rsplit("/", 1)[0]
        with run_gateway(url, env={"GATEWAY_HEALTH_POLL_S": "1"}) as gw:
            first = mark_warm(gw)
            events = stream_then_kill(gw, upstream.pid, {**CHAT, "max_tokens": 200})
            assert_terminal_error(events)
            wait_health_503(gw)
            assert_new_requests_503(gw)

            upstream.stop()
            upstream.start(timeout_s=30)  # same port, new process: a new engine instance
            assert len(assert_serves_again(gw, first)) == 6  # 5 tokens + [DONE]
    finally:
        upstream.stop()


@pytest.mark.engine
@pytest.mark.slow
def test_real_engine_killed_mid_stream_and_recovery(engine2: Engine) -> None:
    """The same with the session's second real engine (never the first, which most tests use);
    it serves again afterwards."""
    with (
        running_after(engine2) as eng,
        run_gateway(eng.url, env={"GATEWAY_HEALTH_POLL_S": "1"}) as gw,
    ):
        first = mark_warm(gw)
        body = {**CHAT, "max_tokens": 1900, "ignore_eos": True}
        # Kill at the first event: a fast engine could otherwise finish before the kill.
        vllm = child_group(eng.pid)  # the engine itself, as in a crash (OOM kill)
        events = stream_then_kill(gw, vllm, body, after_events=1)
        assert_terminal_error(events)
        wait_health_503(gw)
        assert_new_requests_503(gw)

        eng.restart()  # same port; the gateway keeps running
        assert_serves_again(gw, first)
