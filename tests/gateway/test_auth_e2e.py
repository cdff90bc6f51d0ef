"""Keys, the internal token and the warm-up handshake through a keyed gateway process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway.tenancy.auth import hash_key
from tests.support.engine import Engine
from tests.support.gateway import RunningGateway, mark_warm, run_gateway, wait_for_instance
from tests.support.held import HELD_BODY

pytestmark = pytest.mark.engine
KEY = "sk-gw-test-0123456789abcdef"
HASHED_KEY = "sk-gw-hashed-0123456789abcdef"
CHAT = {"model": "gemma-4-tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


@contextmanager
def keyed_gateway(engine: Engine, workdir: Path) -> Iterator[RunningGateway]:
    keys = workdir / "api-keys"
    keys.write_text(f"{KEY} tester\n{hash_key(HASHED_KEY)} hashed\n")
    env = {"GATEWAY_API_KEYS_FILE": str(keys), "GATEWAY_PER_KEY_CONCURRENCY": "1"}
    with run_gateway(engine.url, env=env) as gw:
        yield gw


@pytest.fixture(scope="module")
def keyed(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A keyed gateway, warmed: every test may use it in any order."""
    with keyed_gateway(engine, tmp_path_factory.mktemp("keys")) as gw:
        mark_warm(gw)
        yield gw


@pytest.fixture
def unwarmed(engine: Engine, tmp_path: Path) -> Iterator[RunningGateway]:
    """A keyed gateway of this test's own that nobody has warmed yet."""
    with keyed_gateway(engine, tmp_path) as gw:
        yield gw


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_warmup_handshake_gates_service(unwarmed: RunningGateway) -> None:
    keyed = unwarmed
    url = keyed.url
    instance = wait_for_instance(keyed)
    r = httpx.get(f"{url}/health", timeout=5)
    assert r.status_code == 503 and r.json()["status"] == "warming_up"
    assert int(r.headers["retry-after"]) >= 1
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=auth(KEY), timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "warming_up"
    assert "retry-after" in r.headers

    report = {"engine_instance": instance, "status": "running", "step": "chat", "detail": None}
    assert httpx.post(f"{url}/internal/warmup", json=report, timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token-not-the-token"}
    assert httpx.post(f"{url}/internal/warmup", json=report, headers=wrong).status_code == 401
    stale = {**report, "engine_instance": "12345.0"}
    r = httpx.post(f"{url}/internal/warmup", json=stale, headers=keyed.internal_headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "stale_engine_instance"

    failed = {**report, "status": "failed", "step": "tool_call", "detail": "no tool call"}
    r = httpx.post(f"{url}/internal/warmup", json=failed, headers=keyed.internal_headers)
    assert r.status_code == 200 and r.json()["state"] == "warmup_failed"
    assert httpx.get(f"{url}/health").json()["status"] == "warmup_failed: tool_call"

    passed = {**report, "status": "passed", "step": None}
    r = httpx.post(f"{url}/internal/warmup", json=passed, headers=keyed.internal_headers)
    assert r.json()["state"] == "ready"
    h = httpx.get(f"{url}/health", timeout=5)
    assert h.status_code == 200 and h.json()["status"] == "ok"
    got = httpx.get(f"{url}/internal/warmup", headers=keyed.internal_headers).json()
    assert set(got) == {"state", "engine_instance", "step", "detail", "since",  # the replica's
                        "replicas", "ready", "min_ready", "draining"}  # and the set's  # fmt: skip
    assert (got["state"], got["ready"], got["replicas"][0]["state"]) == ("ready", 1, "ready")
    instance = got["engine_instance"]
    one = httpx.get(f"{url}/internal/warmup", params={"instance": instance},
                    headers=keyed.internal_headers)  # fmt: skip
    assert one.status_code == 200 and one.json()["engine_instance"] == instance
    gone = httpx.get(f"{url}/internal/warmup", params={"instance": "1.0"},
                     headers=keyed.internal_headers)  # fmt: skip
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_engine_instance"


def test_api_keys(keyed: RunningGateway) -> None:
    url = f"{keyed.url}/v1/chat/completions"
    r = httpx.post(url, json=CHAT, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(url, json=CHAT, headers=auth("sk-wrong-0123456789abcdef")).status_code == 401
    assert httpx.get(f"{keyed.url}/v1/models").status_code == 401
    assert httpx.post(f"{keyed.url}/tokenize", json={"prompt": "x"}).status_code == 401
    for key in (KEY, HASHED_KEY):
        r = httpx.post(url, json=CHAT, headers=auth(key), timeout=30)
        assert r.status_code == 200, r.text
    log = Path(keyed.workdir / "gateway.log").read_text()
    assert KEY not in log and HASHED_KEY not in log and keyed.internal_token not in log


def test_open_gateway_metrics_are_open_like_its_api(gateway: RunningGateway) -> None:
    """Open (cpu, no keys file): /v1/* takes any caller, and so does /metrics."""
    assert httpx.get(f"{gateway.url}/metrics", timeout=5).status_code == 200
    r = httpx.get(f"{gateway.url}/metrics", headers=auth("anything-at-all-12345"), timeout=5)
    assert r.status_code == 200
    assert httpx.get(f"{gateway.url}/metrics", headers=gateway.internal_headers).status_code == 200


def test_metrics_need_a_key_or_the_token(keyed: RunningGateway) -> None:
    url = f"{keyed.url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=auth(KEY)).status_code == 200
    r = httpx.get(url, headers=keyed.internal_headers)
    assert r.status_code == 200
    for name in ("gateway_requests_total", "gateway_rejections_total", "gateway_queue_depth",
                 "gateway_inflight", "gateway_queue_wait_seconds", "gateway_ttft_seconds",
                 "gateway_request_duration_seconds", "gateway_streamed_tokens_total",
                 "gateway_engine_saturated", "gateway_warmup_state"):  # fmt: skip
        assert name in r.text
    assert 'gateway_rejections_total{reason="auth"}' in r.text


def test_per_key_concurrency_limit(keyed: RunningGateway) -> None:
    """GATEWAY_PER_KEY_CONCURRENCY=1: a key's second request is 429 while its first is in
    flight; another key is not affected, and the key is free again once its stream ends.

    The first request is held in flight by its client not reading (its ~7 MB response cannot
    fit in the kernel buffers, so the gateway's relay stalls on backpressure; see
    ``tests/support/held.py``), so "in flight" can be read from the gateway's gauge
    however late a scrape is answered on a starved 2-core box."""
    url = f"{keyed.url}/v1/completions"
    short = {"model": "gemma-4-tiny", "prompt": "x", "max_tokens": 2}
    release = threading.Event()

    def first() -> list[str]:
        with httpx.stream("POST", url, json=HELD_BODY, headers=auth(KEY), timeout=120) as r:
            assert r.status_code == 200
            release.wait(120)
            return [line for line in r.iter_lines() if line]

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(first)
        try:
            deadline = time.monotonic() + 120  # a bound against hanging, not a timing claim
            while keyed.metric("gateway_inflight") < 1:
                assert not running.done(), running.result()[-3:]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            second = httpx.post(url, json=short, headers=auth(KEY), timeout=30)
            assert second.status_code == 429, second.text
            assert second.json()["error"]["code"] == "per_key_limit"
            assert int(second.headers["retry-after"]) >= 1
            other = httpx.post(url, json=short, headers=auth(HASHED_KEY), timeout=30)
            assert other.status_code == 200, other.text
        finally:
            release.set()
        assert running.result(timeout=300)[-1] == "data: [DONE]"
    assert httpx.post(url, json=short, headers=auth(KEY), timeout=30).status_code == 200
