"""warmup/sidecar.py's side of the handshake, against small real fakes (no vLLM).

The engine is the synthetic upstream (``python -m bench synthetic``: real /health, /v1/models,
/metrics with a start time, /tokenize, /detokenize, chat) or ``FakeEngine`` (a /metrics page
whose start time the test changes); the gateway is the real ``python -m gateway`` process or
``FakeGateway`` (a loopback /internal/warmup whose answers the test decides).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.overhead import synthetic_upstream
from env.settings import EngineEnv, EngineSettings, WarmupSettings
from protocol.handshake import DETAIL_MAX
from protocol.identity import engine_instance
from tests.support.gateway import run_gateway
from tests.support.process import REPO, free_port
from tests.support.wait import wait_until
from tests.warmup.fakes import Answer, FakeEngine, FakeGateway, serve
from warmup.notify import HandshakeClient
from warmup.progress import PlainReporter
from warmup.sidecar import Outcome, Sidecar

# A plan the synthetic upstream can serve: no tool or reasoning parser, no logprobs, buckets
# 16/32/64 and one request bucket of 8 (about 20 requests in all).
SYNTHETIC_PROFILE = """\
ENGINE_PLATFORM=cpu
ENGINE_MODEL=synthetic
ENGINE_SERVED_MODEL_NAME=synthetic
ENGINE_MAX_MODEL_LEN=2048
ENGINE_MAX_NUM_SEQS=8
ENGINE_MAX_NUM_BATCHED_TOKENS=64
ENGINE_MAX_PROMPT_TOKENS=64
ENGINE_ENABLE_AUTO_TOOL_CHOICE=false
WARMUP_LOGPROBS=0
WARMUP_CACHE_SAVE=false
"""


def make_sidecar(tmp_path: Path, engine_url: str, gateway_url: str, **warmup: Any) -> Sidecar:
    token = tmp_path / "internal-token"
    token.write_text("test-token\n")
    settings = WarmupSettings(
        engine_url=engine_url, gateway_url=gateway_url, cache_save=False, **warmup
    )
    return Sidecar(
        profile="test",
        engine=EngineSettings(),
        engine_env=EngineEnv(),
        warmup=settings,
        reporter=PlainReporter(io.StringIO()),
        gateway=HandshakeClient(gateway_url, token, settings.gateway_timeout_s),
        report_path=tmp_path / "report.json",
    )


def log_of(sidecar: Sidecar) -> str:
    stream = sidecar.reporter._stream  # type: ignore[attr-defined]
    return str(stream.getvalue())


def post_final(sidecar: Sidecar, outcome: Outcome, timeout_s: float) -> Outcome:
    async def go() -> None:
        async with httpx.AsyncClient(base_url=sidecar.engine_url) as client:
            await sidecar._post_final(client, outcome, timeout_s)

    asyncio.run(go())
    return outcome


def passed(instance: str) -> Outcome:
    return Outcome("passed", instance, result="passed")


def test_a_409_while_the_gateway_lags_is_retried_until_it_sees_the_instance(
    tmp_path: Path,
) -> None:
    engine = FakeEngine()

    def lagging(gw: FakeGateway, body: dict[str, Any]) -> Answer:
        if len(gw.posts) == 2:  # the gateway's monitor polls the engine only now
            gw.instance = engine.instance
        return gw.accept(body)

    gateway = FakeGateway(instance=None, on_post=lagging)
    with serve(engine.app) as eng_url, serve(gateway.app) as gw_url:
        sidecar = make_sidecar(tmp_path, eng_url, gw_url)
        outcome = post_final(sidecar, passed(engine.instance), timeout_s=30)
    assert (outcome.status, outcome.posted, outcome.gateway_error) == ("passed", "passed", None)
    assert [(p["engine_instance"], p["status"]) for p in gateway.posts] == [
        (engine.instance, "passed")
    ] * 3
    assert gateway.state == "ready"


def test_a_409_after_an_engine_restart_is_engine_lost_without_retrying(tmp_path: Path) -> None:
    engine = FakeEngine()
    warmed = engine.instance
    engine.start_time += 60  # restarted after the plan ran
    gateway = FakeGateway(instance=engine.instance)
    with serve(engine.app) as eng_url, serve(gateway.app) as gw_url:
        outcome = post_final(make_sidecar(tmp_path, eng_url, gw_url), passed(warmed), 30)
    assert outcome.status == "engine_lost" and outcome.posted is None
    assert outcome.message == "engine restarted before the result could be posted"
    assert len(gateway.posts) == 1
    assert gateway.state == "warming_up"


def test_a_gateway_that_never_sees_the_instance_is_a_gateway_error(tmp_path: Path) -> None:
    engine = FakeEngine()
    gateway = FakeGateway(instance="another-engine")
    with serve(engine.app) as eng_url, serve(gateway.app) as gw_url:
        outcome = post_final(make_sidecar(tmp_path, eng_url, gw_url), passed(engine.instance), 2.0)
    assert outcome.status == "gateway_error" and outcome.exit_code == 3
    assert outcome.gateway_error == f"gateway {gw_url} does not see {engine.instance}"
    assert len(gateway.posts) >= 2, "retried while the deadline allowed"


def test_a_failure_is_posted_with_its_step_and_a_bounded_detail(tmp_path: Path) -> None:
    engine = FakeEngine()
    gateway = FakeGateway(instance=engine.instance)
    failed = Outcome("failed", engine.instance, "prompt_64", "x" * 2000, result="failed")
    with serve(engine.app) as eng_url, serve(gateway.app) as gw_url:
        outcome = post_final(make_sidecar(tmp_path, eng_url, gw_url), failed, 30)
    assert outcome.status == "failed" and outcome.posted == "failed"
    [post] = gateway.posts
    assert post["status"] == "failed" and post["step"] == "prompt_64"
    assert post["detail"] == "x" * DETAIL_MAX
    assert gateway.state == "warmup_failed"


def test_a_restarted_gateway_gets_the_result_again_without_a_new_warm_up(tmp_path: Path) -> None:
    """``--watch`` after a pass: while the gateway has the result nothing is posted; once it
    forgets it (a restarted gateway starts at warming_up), the result is re-posted; an engine
    restart ends the watch (the next warm-up is for the new instance)."""
    engine = FakeEngine()
    gateway = FakeGateway(instance=engine.instance, state="ready")
    outcome = Outcome("passed", engine.instance, result="passed", posted="passed")
    with serve(engine.app) as eng_url, serve(gateway.app) as gw_url:
        sidecar = make_sidecar(tmp_path, eng_url, gw_url, watch_interval_s=0.05)

        async def go() -> None:
            monitor = asyncio.create_task(sidecar._monitor(outcome))
            await asyncio.to_thread(gateway.wait_until, lambda g: g.gets >= 3)
            assert gateway.posts == [], "nothing re-posted while the gateway has the result"
            gateway.state = "warming_up"  # what a restarted gateway reports
            await asyncio.to_thread(gateway.wait_until, lambda g: len(g.posts) >= 1)
            engine.start_time += 60
            await asyncio.wait_for(monitor, 30)

        asyncio.run(go())
    assert [(p["engine_instance"], p["status"]) for p in gateway.posts] == [
        (outcome.instance, "passed")
    ]
    assert gateway.state == "ready"
    log = log_of(sidecar)
    assert f"gateway lost the result for {outcome.instance}: re-posting" in log
    assert f"engine instance changed ({outcome.instance} -> {engine.instance})" in log


# --- the sidecar as a process: exit codes ------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_engine() -> Iterator[str]:
    with synthetic_upstream("synthetic", itl_ms=1.0, ttft_ms=0.0) as (url, _pid):
        yield url


def run_warmup(
    tmp_path: Path, engine_url: str, gateway_url: str, *extra: str, **env: str
) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "synthetic.env"
    profile.write_text(SYNTHETIC_PROFILE)
    token = tmp_path / "internal-token"
    if not token.exists():
        token.write_text("test-token\n")
    full_env = {
        **os.environ,
        "WARMUP_ENGINE_URL": engine_url,
        "WARMUP_GATEWAY_URL": gateway_url,
        "GATEWAY_INTERNAL_TOKEN_FILE": str(token),
        "WARMUP_GATEWAY_TIMEOUT_S": "2",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    argv = [sys.executable, "-m", "warmup", "--profile", str(profile), "--plain",
            "--report", str(tmp_path / "report.json"), *extra]  # fmt: skip
    return subprocess.run(argv, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120)


def refuse_503(gw: FakeGateway, body: dict[str, Any]) -> Answer:
    return 503, {"error": {"message": "gateway starting"}}


def stale_409(gw: FakeGateway, body: dict[str, Any]) -> Answer:
    return 409, {"error": {"code": "stale_engine_instance"}}


@pytest.mark.parametrize(
    ("on_post", "code", "last_line"),
    [
        (None, 0, None),
        (refuse_503, 3, "warmup: passed, but gateway {url} unreachable: HTTP 503"),
        (stale_409, 3, "warmup: passed, but gateway {url} does not see "),
    ],
    ids=["accepted", "gateway-5xx", "gateway-never-sees-the-engine"],
)
def test_exit_code_3_when_the_gateway_cannot_be_told(
    tmp_path: Path, synthetic_engine: str, on_post, code: int, last_line: str | None
) -> None:
    # the gateway sees the synthetic engine's instance, as its monitor would
    instance = engine_instance(httpx.get(f"{synthetic_engine}/metrics", timeout=10).text)
    gateway = FakeGateway(instance=instance, on_post=on_post)
    with serve(gateway.app) as gw_url:
        done = run_warmup(tmp_path, synthetic_engine, gw_url)
    assert done.returncode == code, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["result"] == "passed", "the plan itself passed every time"
    if last_line is None:
        assert report["gateway"] == {"url": gw_url, "posted": "passed", "error": None}
        assert gateway.state == "ready"
    else:
        assert done.stderr.strip().splitlines()[-1].startswith(last_line.format(url=gw_url))
        assert report["gateway"]["posted"] is None and report["gateway"]["error"]
        assert gateway.state == "warming_up"


@pytest.mark.timeout(240)
def test_a_real_gateway_restart_is_re_posted_by_the_watching_sidecar(
    tmp_path: Path, synthetic_engine: str
) -> None:
    """The real gateway process, restarted on the same port and token file while ``--watch``
    runs: /health turns 200 again for the same engine instance, the plan is not run again."""
    port, token = free_port(), tmp_path / "internal-token"
    env = {"GATEWAY_INTERNAL_TOKEN_FILE": str(token)}
    log_path = tmp_path / "watch.log"
    profile = tmp_path / "synthetic.env"
    profile.write_text(SYNTHETIC_PROFILE)
    watch_env = {
        **os.environ,
        "WARMUP_ENGINE_URL": synthetic_engine,
        "WARMUP_GATEWAY_URL": f"http://127.0.0.1:{port}",
        "GATEWAY_INTERNAL_TOKEN_FILE": str(token),
        "WARMUP_WATCH_INTERVAL_S": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("w") as log:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "warmup", "--profile", str(profile), "--plain", "--watch",
             "--report", str(tmp_path / "report.json")],
            cwd=REPO, env=watch_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        with run_gateway(synthetic_engine, port=port, env=env) as gw:
            first = wait_ready(gw.url, log_path)
        with run_gateway(synthetic_engine, port=port, env=env) as gw:
            again = wait_ready(gw.url, log_path)
        assert watcher.poll() is None, "the watcher kept running across the gateway restart"
    finally:
        os.killpg(watcher.pid, signal.SIGTERM)
        code = watcher.wait(timeout=30)
    assert code == 0
    assert again == first
    text = log_path.read_text()
    assert f"gateway lost the result for {first}: re-posting" in text
    assert text.count("running 6 steps") == 1, "re-posted, not re-warmed"


def wait_ready(url: str, log_path: Path, timeout_s: float = 60.0) -> str:
    """Poll /health until 200 (a slow or refused answer is "not yet"); returns the engine
    instance it serves."""
    last: list[str] = []

    def served() -> str | None:
        r = httpx.get(f"{url}/health", timeout=5)
        if r.status_code == 200:
            return str(r.json()["engine_instance"])
        last[:] = [f"{r.status_code} {r.text}"]
        return None

    try:
        return wait_until(served, "/health 200", timeout_s, interval_s=0.1)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; last answer: {last}\n{log_path.read_text()[-3000:]}"
        ) from None
