"""The sidecar end to end: real CPU engine, real gateway process, ``python -m warmup`` as a process.

These prove the handshake contract from the outside: the gateway's ``/health`` is 503 until the
sidecar has warmed *this* engine instance, stays 503 with the failing step as its reason, and
goes back to 503 when the engine restarts until the watching sidecar has warmed the new one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from env.settings import EngineEnv, EngineSettings, WarmupSettings
from tests.support.engine import PROFILE, Engine
from tests.support.gateway import RunningGateway, run_gateway, wait_for_instance
from tests.support.process import REPO
from warmup.plan import build_plan

pytestmark = pytest.mark.engine

SYSTEM_PROMPT = "You are the test deployment's assistant. Answer in one short sentence. " * 12


def warmup_env(engine: Engine, gw: RunningGateway, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "WARMUP_ENGINE_URL": engine.url,
        "WARMUP_GATEWAY_URL": gw.url,
        "GATEWAY_INTERNAL_TOKEN_FILE": str(gw.token_file),
        "WARMUP_CACHE_SAVE": "false",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def warmup_argv(report: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "warmup",
        "--profile",
        str(PROFILE),
        "--report",
        str(report),
        *extra,
    ]


@dataclass
class Sample:
    t: float
    code: int
    status: str
    instance: str | None


@contextmanager
def health_poller(url: str, every_s: float = 0.05) -> Iterator[list[Sample]]:
    """Sample the gateway's /health in the background for the duration of the block."""
    samples: list[Sample] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=2) as client:
            while not stop.is_set():
                try:
                    r = client.get(f"{url}/health")
                    body = r.json()
                    samples.append(Sample(time.time(), r.status_code, body.get("status"),
                                          body.get("engine_instance")))  # fmt: skip
                except (httpx.HTTPError, ValueError):
                    pass
                stop.wait(every_s)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=5)


def health(gw: RunningGateway) -> httpx.Response:
    return httpx.get(f"{gw.url}/health", timeout=5)


def wait_health(gw: RunningGateway, predicate, timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = health(gw)
        if predicate(r):
            return r
        time.sleep(0.1)
    raise AssertionError(f"gateway /health never matched: {health(gw).text}\n{gw.log_tail()}")


def wait_sample(samples: list[Sample], predicate, timeout_s: float) -> str:
    """The engine instance of the first polled sample matching ``predicate``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for s in list(samples):
            if predicate(s):
                return s.instance
        time.sleep(0.1)
    raise AssertionError(f"gateway /health never matched; last samples: {samples[-3:]}")


def test_full_plan_passes_and_health_turns_200_only_after_it(
    engine: Engine, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    with run_gateway(engine.url) as gw:
        wait_for_instance(gw)
        before = health(gw)
        assert before.status_code == 503 and before.json()["status"] == "warming_up"
        assert before.headers.get("retry-after")
        env = warmup_env(
            engine, gw,
            WARMUP_SYSTEM_PROMPT=SYSTEM_PROMPT,
            # the real write-back, into this engine's private cache dirs
            WARMUP_CACHE_SAVE="true",
            CACHE_HOT_DIR=engine.env["CACHE_HOT_DIR"],
            CACHE_PERSIST_DIR=engine.env["CACHE_PERSIST_DIR"],
        )  # fmt: skip
        with health_poller(gw.url) as samples:
            done = subprocess.run(warmup_argv(report_path), env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=240)  # fmt: skip
            time.sleep(0.3)
        assert done.returncode == 0, done.stderr[-3000:]
        after = health(gw)
        assert after.status_code == 200 and after.json()["status"] == "ok"
        ready_since = float(gw.state()["since"])

    report = json.loads(report_path.read_text())
    expected = build_plan(
        EngineSettings.load(PROFILE), EngineEnv.load(PROFILE),
        WarmupSettings(system_prompt=SYSTEM_PROMPT),
    )  # fmt: skip
    assert report["outcome"] == "passed" and report["gateway"]["posted"] == "passed"
    assert [s["name"] for s in report["steps"]] == expected.names
    assert "prefix" in expected.names and "tools" in expected.names
    for step in report["steps"]:
        assert step["status"] == "passed", step
        assert step["first_s"] > 0 and step["second_s"] > 0, step
    assert report["engine"]["instance"] == after.json()["engine_instance"]
    assert report["engine"]["version"] and report["engine"]["model"] == "gemma-4-tiny"
    assert "compile cache saved" in done.stderr, done.stderr[-2000:]

    # 503 warming_up for the whole plan, 200 only once the sidecar posted "passed"
    plan_time = sum(s["first_s"] + s["second_s"] for s in report["steps"])
    assert ready_since >= report["started_at"] + plan_time
    early = [s for s in samples if s.t < ready_since]
    assert len(early) >= 10, "the poller watched the gateway while the plan ran"
    assert {(s.code, s.status) for s in early} == {(503, "warming_up")}
    assert all(s.code == 200 for s in samples if s.t > ready_since + 0.2)


def test_a_failing_step_keeps_health_503_with_that_step(engine: Engine, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    # a profile that promises prompts as long as the whole context: the first bucket at the
    # limit leaves no room to generate, and the engine refuses it
    limit = str(engine.settings.max_model_len)
    with run_gateway(engine.url) as gw:
        wait_for_instance(gw)
        env = warmup_env(engine, gw, ENGINE_MAX_PROMPT_TOKENS=limit)
        done = subprocess.run(warmup_argv(report_path), env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=240)  # fmt: skip
        assert done.returncode == 1, done.stderr[-3000:]
        last = done.stderr.strip().splitlines()[-1]
        assert f"prompt_{limit}" in last and "HTTP 400" in last and "max_tokens" in last, last
        r = health(gw)
        assert r.status_code == 503
        assert r.json()["status"] == f"warmup_failed: prompt_{limit}"
        assert r.headers.get("retry-after")
        assert "HTTP 400" in (gw.state()["detail"] or "")

    report = json.loads(report_path.read_text())
    assert report["outcome"] == "failed" and report["failed_step"] == f"prompt_{limit}"
    failing = next(s for s in report["steps"] if s["name"] == f"prompt_{limit}")
    assert failing["status"] == "failed" and failing["http_status"] == 400
    assert report["steps"][-1]["status"] == "not_run"


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_engine_restart_returns_health_to_503_until_the_watcher_rewarms(
    engine: Engine, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    with run_gateway(engine.url) as gw:
        env = warmup_env(engine, gw, WARMUP_WATCH_INTERVAL_S="0.5")
        log = (tmp_path / "watch.log").open("w")
        watcher = subprocess.Popen(warmup_argv(report_path, "--watch"), env=env, cwd=REPO,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            first = wait_health(gw, lambda r: r.status_code == 200, 120).json()["engine_instance"]
            with health_poller(gw.url) as samples:
                engine.restart()  # same port, new process: a new engine instance
                # Wait on the poller's own samples (not a second loop): the sequence asserted
                # below must contain the first 200 of the new instance.
                new = wait_sample(samples, lambda s: s.code == 200 and s.instance != first, 180)
        finally:
            os.killpg(watcher.pid, signal.SIGTERM)
            code = watcher.wait(timeout=20)
            log.close()
        assert code == 0, "the watcher exits cleanly on SIGTERM"

    assert new != first
    statuses_new = [s for s in samples if s.instance == new]
    assert statuses_new and statuses_new[0].code == 503, "the new instance starts unserved"
    assert statuses_new[0].status == "warming_up"
    assert any(s.code == 503 for s in samples), samples[:5]
    first_ok = next(s.t for s in statuses_new if s.code == 200)
    assert all(s.code == 503 for s in statuses_new if s.t < first_ok)
    report = json.loads(report_path.read_text())
    assert report["engine"]["instance"] == new and report["outcome"] == "passed"
    watch_log = (tmp_path / "watch.log").read_text()
    assert "gateway told: passed for instance " + new in watch_log
