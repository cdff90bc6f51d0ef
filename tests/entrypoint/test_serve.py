"""The real CPU engine, started by the production entrypoint (`python -m entrypoint serve`)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from entrypoint.process import descendants, group_members
from tests.support.engine import Engine, start_engine

pytestmark = pytest.mark.engine


def test_health_and_models(engine: Engine) -> None:
    assert httpx.get(f"{engine.url}/health", timeout=10).status_code == 200
    models = httpx.get(f"{engine.url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [engine.settings.served_model_name]


def test_streamed_chat_returns_tokens_then_done(engine: Engine) -> None:
    body = {
        "model": engine.settings.served_model_name,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 8,
        "stream": True,
    }
    events: list[str] = []
    with httpx.stream("POST", f"{engine.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text, "no tokens streamed"


def listening_sockets(root_pid: int) -> dict[tuple[str, int], set[int]]:
    """Every TCP socket in LISTEN state held by ``root_pid`` or a descendant: (address, port) ->
    the PIDs holding it. Read from the kernel (psutil parses /proc/<pid>/net/tcp{,6} and fds)."""
    found: dict[tuple[str, int], set[int]] = {}
    for pid in (root_pid, *descendants(root_pid)):
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                found.setdefault((c.laddr.ip, c.laddr.port), set()).add(pid)
    return found


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_engine_is_bound_to_loopback(engine: Engine) -> None:
    """The real processes' listening sockets, not the profile: the API port is on 127.0.0.1 and
    nothing in the engine's process tree (API server, EngineCore) listens on a public address."""
    sockets = listening_sockets(engine.pid)
    assert any(port == engine.port for _addr, port in sockets), (
        f"no listener on port {engine.port}: {sockets}"
    )
    public = {k: v for k, v in sockets.items() if k[0] not in LOOPBACK}
    assert public == {}, f"engine processes listen beyond loopback: {public}"


@pytest.mark.slow
def test_sigterm_stops_the_whole_group(tmp_path: Path, tiny_model: None) -> None:
    """SIGTERM to the entrypoint reaches vLLM's own process group; nothing is left behind."""
    eng = start_engine(tmp_path, extra_env={"ENGINE_ENFORCE_EAGER": "true"})
    try:
        kids = descendants(eng.pid)
        assert len(kids) >= 2, "expected vLLM's API server plus its EngineCore"
        vllm_groups = {os.getpgid(k) for k in kids}
        assert eng.pid not in vllm_groups, "vLLM must run in its own process group"
        os.kill(eng.pid, signal.SIGTERM)  # the entrypoint alone, as `docker stop` would
        # Wait for the event itself, with a generous outer bound (not the 10 s SIGKILL grace: a
        # slow machine may take longer, and the exit code already says how the stop went).
        # 0 means vLLM's group exited on the forwarded SIGTERM within run_group's grace; had the
        # grace run out, SIGKILL would have made run_group return -9 (exit status 247).
        code = eng.server.proc.wait(timeout=120)
        assert code == 0, f"entrypoint exit {code}:\n{eng.server.log_tail()}"
        assert "got signal 15, stopping vLLM process group" in eng.server.log_path.read_text()
        # After the entrypoint exits nothing of vLLM may remain (zombies excepted).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(group_members(g) for g in vllm_groups):
            time.sleep(0.1)
        assert [g for g in vllm_groups if group_members(g)] == [], "orphaned vLLM processes"
    finally:
        eng.stop()
