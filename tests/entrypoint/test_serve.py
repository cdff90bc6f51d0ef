"""The real CPU engine, started by the production entrypoint (`python -m entrypoint serve`)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
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


def test_engine_is_bound_to_loopback(engine: Engine) -> None:
    assert engine.settings.host == "127.0.0.1"


@pytest.mark.slow
def test_sigterm_stops_the_whole_group(tmp_path: Path, tiny_model: None) -> None:
    """SIGTERM to the entrypoint reaches vLLM's own process group; nothing is left behind."""
    eng = start_engine(tmp_path, extra_env={"ENGINE_ENFORCE_EAGER": "true"})
    try:
        kids = descendants(eng.pid)
        assert len(kids) >= 2, "expected vLLM's API server plus its EngineCore"
        vllm_groups = {os.getpgid(k) for k in kids}
        assert eng.pid not in vllm_groups, "vLLM must run in its own process group"
        t0 = time.monotonic()
        os.kill(eng.pid, signal.SIGTERM)  # the entrypoint alone, as `docker stop` would
        code = eng.server.proc.wait(timeout=15)
        elapsed = time.monotonic() - t0
        assert elapsed < 10, f"stop took {elapsed:.1f}s"
        assert code == 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(group_members(g) for g in vllm_groups):
            time.sleep(0.1)
        assert [g for g in vllm_groups if group_members(g)] == [], "orphaned vLLM processes"
    finally:
        eng.stop()
