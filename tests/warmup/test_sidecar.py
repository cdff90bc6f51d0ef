"""The sidecar end to end: real CPU engine, real gateway process, ``python -m warmup`` as a process.

These prove the handshake contract from the outside: the gateway's ``/health`` is 503 until the
sidecar has warmed *this* engine instance, stays 503 with the failing step as its reason, and
goes back to 503 when the engine restarts until the watching sidecar has warmed the new one.
The restart test starts an engine of its own: the session's shared engine is never restarted.
"""

from __future__ import annotations

import json
import os
import shutil
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

from entrypoint.cache import active_key
from env.settings import EngineEnv, EngineSettings, WarmupSettings
from tests.support.engine import PROFILE, Engine, running_after
from tests.support.gateway import RunningGateway, run_gateway, wait_for_instance
from tests.support.process import REPO
from tests.support.wait import wait_until
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
    """One /health answer: ``sent`` before the request went out, ``received`` after the answer
    (wall clock, the clock of the gateway's ``since``), so an answer's moment is bracketed."""

    sent: float
    received: float
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
                sent = time.time()
                try:
                    r = client.get(f"{url}/health")
                    body = r.json()
                    samples.append(Sample(sent, time.time(), r.status_code, body.get("status"),
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
    """The first /health answer matching ``predicate`` (a slow or refused one is "not yet")."""
    last: list[str] = []

    def matched() -> httpx.Response | None:
        r = health(gw)
        if predicate(r):
            return r
        last[:] = [f"{r.status_code} {r.text}"]
        return None

    try:
        return wait_until(matched, "a matching gateway /health", timeout_s, interval_s=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer: {last}\n{gw.log_tail()}") from None


def files(root: Path) -> set[str]:
    """Every file under ``root``, relative to it."""
    return {str(f.relative_to(root)) for f in root.rglob("*") if f.is_file()}


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
    hot = Path(engine.env["CACHE_HOT_DIR"])
    persist = Path(engine.env["CACHE_PERSIST_DIR"])
    key = active_key(hot)  # recorded by the engine's `cache seed` at start
    assert key is not None, "the engine seeded its compile cache under a key"
    shutil.rmtree(persist / key, ignore_errors=True)  # an earlier copy must not count
    # What the engine wrote into its hot dir since it started (vLLM's torch.compile cache and
    # model info on CPU): the write-back must carry every file of it.
    to_save = files(hot / key)
    assert to_save, "the engine wrote nothing to its hot cache dir"
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
            CACHE_HOT_DIR=str(hot),
            CACHE_PERSIST_DIR=str(persist),
        )  # fmt: skip
        with health_poller(gw.url) as samples:
            done = subprocess.run(warmup_argv(report_path), env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=240)  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
            ready_since = float(gw.state()["since"])
            # the poller's first answer to a request sent after the switch (no sleep-and-hope)
            wait_sample(samples, lambda s: s.sent > ready_since, 60)
        after = health(gw)
        assert after.status_code == 200 and after.json()["status"] == "ok"

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

    # The compile cache went to the persistent dir under the engine's key, every file of it.
    assert files(persist / key) >= to_save, sorted(to_save - files(persist / key))
    for name in to_save:
        assert (persist / key / name).read_bytes() == (hot / key / name).read_bytes(), name
    assert f"compile cache {key}: saved " in done.stderr, done.stderr[-2000:]

    # 503 warming_up for the whole plan, 200 only once the sidecar posted "passed". A sample's
    # answer is known to come before the switch if it was received before ``since``, after it
    # if the request was sent after ``since``; one in flight across the switch may be either.
    plan_time = sum(s["first_s"] + s["second_s"] for s in report["steps"])
    assert ready_since >= report["started_at"] + plan_time
    during_plan = [s for s in samples if report["started_at"] <= s.sent <= s.received < ready_since]
    assert during_plan, "the poller watched the gateway while the plan ran"
    # Never served before "passed". The reason is warming_up, or engine_down while the gateway's
    # monitor misses an engine poll (seen on a starved 2-core box): fail-closed either way.
    early = [s for s in samples if s.received < ready_since]
    assert {s.code for s in early} == {503}
    assert {s.status for s in early} <= {"warming_up", "engine_down"}
    assert "warming_up" in {s.status for s in during_plan}
    late = [s for s in samples if s.sent > ready_since]
    assert late and {(s.code, s.status) for s in late} == {(200, "ok")}


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
@pytest.mark.timeout(1200)
def test_engine_restart_returns_health_to_503_until_the_watcher_rewarms(
    engine2: Engine, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    # The session's second engine: restarting the first would affect the tests that share it.
    with running_after(engine2) as engine, run_gateway(engine.url) as gw:
        env = warmup_env(engine, gw, WARMUP_WATCH_INTERVAL_S="0.5")
        log = (tmp_path / "watch.log").open("w")
        watcher = subprocess.Popen(warmup_argv(report_path, "--watch"), env=env, cwd=REPO,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            first = wait_health(gw, lambda r: r.status_code == 200, 120)
            first = first.json()["engine_instance"]
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
    first_ok = next(i for i, s in enumerate(statuses_new) if s.code == 200)
    unserved = statuses_new[:first_ok]
    assert {s.code for s in unserved} == {503}
    # warming_up until the watcher's "passed"; engine_down only if a monitor poll was missed
    assert "warming_up" in {s.status for s in unserved}
    assert {s.status for s in unserved} <= {"warming_up", "engine_down"}
    report = json.loads(report_path.read_text())
    assert report["engine"]["instance"] == new and report["outcome"] == "passed"
    watch_log = (tmp_path / "watch.log").read_text()
    assert "gateway told: passed for instance " + new in watch_log
