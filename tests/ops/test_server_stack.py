"""The MCP server against the real stack (CPU engine + gateway), over stdio and streamable HTTP,
driven by the SDK's own client. Each tool's figures are checked against what this test measures
itself from the engine or the gateway, at the same moment where the figure moves."""

from __future__ import annotations

import os
import sys
import time

import anyio
import httpx
import pytest
from mcp.client.session import ClientSession

from entrypoint import cache
from entrypoint.render import render
from env.settings import CacheSettings, EngineEnv, EngineSettings
from protocol.prometheus import Scrape, histogram_mean
from tests.ops.conftest import OpsStack
from tests.ops.support import PROFILE, TOOLS, data, over_http, over_stdio, text, with_stdio_session
from tests.support.engine import CoreSteps
from tests.support.process import ServerProcess, free_port

pytestmark = pytest.mark.engine


def engine_scrape(stack: OpsStack) -> Scrape:
    return Scrape.parse(httpx.get(f"{stack.engine.url}/metrics", timeout=30).text)


def test_status_matches_the_gateway_and_engine(ops_stack: OpsStack) -> None:
    (result,) = over_stdio(ops_stack.env, [("get_system_status", {})])
    s = data(result)
    health = httpx.get(f"{ops_stack.gateway.url}/health", timeout=10)
    assert s["gateway"]["serving"] is (health.status_code == 200) is True
    assert s["gateway"]["reason"] == health.json()["status"] == "ok"
    assert s["gateway"]["warmup_state"]["state"] == ops_stack.gateway.state()["state"] == "ready"
    gw_start = ops_stack.gateway.metric("process_start_time_seconds")
    assert 0 < s["gateway"]["uptime_s"] <= time.time() - gw_start + 1
    (eng,) = s["engines"]
    start = engine_scrape(ops_stack).get("process_start_time_seconds")
    assert eng["state"] == "up" and eng["instance"] == repr(start)
    assert 0 < eng["uptime_s"] <= time.time() - start + 1  # measured before this line ran
    assert s["warmup_report"]["verdict"] == "passed"  # the report file the fixture wrote


def test_model_health_and_query_tokens_equal_the_engines_usage(ops_stack: OpsStack) -> None:
    before = engine_scrape(ops_stack)
    health, query = over_stdio(
        ops_stack.env,
        [
            ("verify_model_health", {"max_tokens": 8}),
            ("query_with_stats", {"prompt": "Tell me about Gemma.", "max_tokens": 24}),
        ],
    )
    after = engine_scrape(ops_stack)
    h, q = data(health), data(query)
    assert h["passed"] is True and h["http_status"] == 200 and h["latency_s"] > 0
    generated = after.get("vllm:generation_tokens_total") - before.get(
        "vllm:generation_tokens_total"
    )
    prompted = after.get("vllm:prompt_tokens_total") - before.get("vllm:prompt_tokens_total")
    # nothing else ran on this engine between the two scrapes: the two calls are all of it
    assert h["completion_tokens"] + q["output_tokens"] == generated
    assert 1 <= q["output_tokens"] <= 24
    assert q["prompt_tokens"] < prompted
    assert 0 < q["ttft_s"] <= q["total_s"]
    assert q["tokens_per_s"] == pytest.approx(q["output_tokens"] / q["total_s"], rel=1e-3)
    assert "tok/s" in text(query)


def test_active_models_match_the_engine(ops_stack: OpsStack) -> None:
    (result,) = over_stdio(ops_stack.env, [("get_active_models", {})])
    engine_models = httpx.get(f"{ops_stack.engine.url}/v1/models", timeout=10).json()["data"]
    got = data(result)["models"]
    assert [(m["id"], m["max_model_len"]) for m in got] == [
        (m["id"], m["max_model_len"]) for m in engine_models
    ]
    assert got[0]["id"] == "gemma-4-tiny" and got[0]["max_model_len"] == 2048


def test_system_details_are_the_rendered_profile_and_the_running_version(
    ops_stack: OpsStack,
) -> None:
    (result,) = over_stdio(ops_stack.env, [("get_system_details", {})])
    d = data(result)
    engine = EngineSettings.load(PROFILE)
    cache_settings = CacheSettings(
        hot_dir=ops_stack.env["CACHE_HOT_DIR"], persist_dir=ops_stack.env["CACHE_PERSIST_DIR"]
    )  # type: ignore[arg-type]
    assert d["engine_argv"] == render(engine, EngineEnv.load(PROFILE), cache_settings).argv
    version = httpx.get(f"{ops_stack.engine.url}/version", timeout=10).json()["version"]
    assert d["vllm_version_running"] == version
    # the key the engine's launcher recorded at start, and its compile-cache line
    assert d["compile_cache_key"] == cache.active_key(cache_settings.hot_dir)
    assert d["compile_cache_key"] in d["compile_cache_at_start"]
    # its persistent dir was seeded from the session's compile cache or not (the order decides)
    assert d["compile_cache_seeded"] is ops_stack.engine.seeded
    assert d["hardware"]["cpu_cores"] == os.cpu_count()


def test_memory_layout_is_the_engines_log_line_next_to_the_model(ops_stack: OpsStack) -> None:
    (result,) = over_stdio(ops_stack.env, [("get_memory_layout", {})])
    m = data(result)
    line = next(x for x in ops_stack.engine_log.read_text().splitlines() if "KV cache size:" in x)
    tokens = int(line.split("KV cache size: ")[1].split(" tokens")[0].replace(",", ""))
    assert m["engine_reported"]["kv_cache_tokens"] == tokens
    assert m["engine_reported"]["max_concurrency"] == float(line.rsplit(": ", 1)[1].rstrip("x"))
    assert abs(m["model_minus_reported_pct"]["kv_cache_tokens_pct"]) <= 5.0
    assert m["model"]["kv_cache_tokens"] == pytest.approx(tokens, rel=0.05)


BURST = 32  # streams started together from one event loop
BODY = {
    "model": "gemma-4-tiny", "messages": [{"role": "user", "content": "go"}],
    "max_tokens": 1700, "ignore_eos": True, "stream": True,
}  # fmt: skip


def test_metrics_running_count_equals_the_engines_at_the_same_moment(ops_stack: OpsStack) -> None:
    """Bursts of long generations straight to the engine; once some run, the engine's core is
    stopped (``CoreSteps``: the API server answers on, the count holds still) and the tool's
    running count is read between two reads of the engine's own: the three must agree on a
    non-zero count. Why stopped: a CI run on a loaded machine read ``/metrics`` so slowly that
    whole bursts of the tiny model's 1,700-token generations ended between two reads, and the
    count was never caught above 0. A burst that ends before it is caught is sent again."""
    errors: list[str] = []
    core = CoreSteps(ops_stack.engine)

    async def bracketed(session: ClientSession) -> tuple[list[tuple[float, float, float]], dict]:
        readings: list[tuple[float, float, float]] = []
        m: dict = {}
        # No keep-alive: a connection reused after more than the engine's 5 s idle timeout
        # (uvicorn's) can meet its close on the way in and read a reset (a CI run's ReadError).
        limits = httpx.Limits(max_connections=BURST + 4, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:

            async def running() -> float:
                page = (await client.get(f"{ops_stack.engine.url}/metrics")).text
                return Scrape.parse(page).get("vllm:num_requests_running") or 0.0

            ended = [0]

            async def stream() -> None:
                url = f"{ops_stack.engine.url}/v1/chat/completions"
                try:
                    async with client.stream("POST", url, json=BODY) as r:
                        if r.status_code != 200:
                            errors.append(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
                            return
                        async for _ in r.aiter_bytes():
                            pass
                finally:
                    ended[0] += 1

            for _burst in range(6):
                ended[0] = 0
                async with anyio.create_task_group() as tg:
                    for _ in range(BURST):
                        tg.start_soon(stream)
                    with anyio.fail_after(120):  # a bound against a hang
                        while await running() < 1 and not errors and ended[0] < BURST:
                            await anyio.sleep(0.02)
                    if ended[0] == BURST:
                        continue  # over before it was caught: another burst
                    core.stop()
                    try:
                        # the outputs already on their way reach the API server: the count
                        # settles (two equal reads 0.3 s apart), then holds
                        settled, last = await running(), -1.0
                        while settled != last:
                            await anyio.sleep(0.3)
                            settled, last = await running(), settled
                        before = await running()
                        m = data(await session.call_tool("get_metrics", {}))
                        after = await running()
                        readings.append((before, m["engine"]["running"], after))
                    finally:
                        core.resume()
                    tg.cancel_scope.cancel()  # closes the streams: the engine aborts them
                    if before >= 1 or errors:
                        return readings, m
        return readings, m

    readings, m = with_stdio_session(ops_stack.env, bracketed)
    assert not errors, f"a stream failed: {errors}"
    before, running, after = readings[-1]
    assert before == running == after >= 1, f"(engine before, tool, engine after): {readings}"
    assert m["engine"]["waiting"] == 0.0
    assert 0 < m["engine"]["kv_cache_usage"] < 1
    # whole-run means: the engine's own sum/count, read once nothing runs
    deadline = time.monotonic() + 60
    while engine_scrape(ops_stack).get("vllm:num_requests_running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    (idle,) = over_stdio(ops_stack.env, [("get_metrics", {"sample_seconds": 0.5})])
    now = engine_scrape(ops_stack)
    recent = data(idle)["engine_recent"]  # a new server keeps no scrape: two taken 0.5 s apart
    assert recent["source"] == "two scrapes 0.5 s apart" and recent["span_s"] >= 0.5
    assert recent["requests_finished"] == 0  # nothing ran in that half second
    w = data(idle)["engine_whole_run"]
    mean, count = histogram_mean(now, "vllm:time_to_first_token_seconds")
    assert (w["mean_ttft_s"], w["ttft_s_observations"]) == (pytest.approx(mean, abs=1e-6), count)
    mean, count = histogram_mean(now, "vllm:e2e_request_latency_seconds")
    assert (w["mean_e2e_s"], w["e2e_s_observations"]) == (pytest.approx(mean, abs=1e-6), count)
    assert w["requests_finished"] == now.get("vllm:request_success_total")
    g = Scrape.parse(ops_stack.gateway.metrics_text())
    assert data(idle)["gateway_whole_run"]["rejections_by_reason"] == g.by_label(
        "gateway_rejections_total", "reason"
    )
    assert data(idle)["gateway"]["queue_depth"] == g.get("gateway_queue_depth") == 0


def test_actions_go_through_the_gateway_only_when_allowed(ops_stack: OpsStack) -> None:
    env = {**ops_stack.env, "OPS_ALLOW_ACTIONS": "true"}
    (result,) = over_stdio(env, [("start_warmup", {})])
    # the gateway has no route that starts a warm-up yet: the tool says so, the state is untouched
    assert result.is_error and "no route to start a warm-up" in text(result)
    assert ops_stack.gateway.state()["state"] == "ready"


def test_a_stopped_engine_is_a_clear_tool_error(ops_stack: OpsStack) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**ops_stack.env, "OPS_ENGINE_URLS": dead}
    metrics, status, after = over_stdio(
        env, [("get_metrics", {}), ("get_system_status", {}), ("get_active_models", {})]
    )
    assert metrics.is_error and f"engine at {dead}: GET {dead}/metrics: connection refused" in text(
        metrics
    )
    assert data(status)["engines"][0]["state"] == "down"
    assert data(after)["models"][0]["id"] == "gemma-4-tiny"  # still up, still answering


def test_streamable_http_transport(ops_stack: OpsStack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = ServerProcess(
        argv=[
            sys.executable,
            "-m",
            "ops",
            "--profile",
            str(PROFILE),
            "--transport",
            "http",
            "--port",
            str(port),
        ],
        env={**ops_stack.env, "PYTHONUNBUFFERED": "1"},
        ready_url=f"http://127.0.0.1:{port}/livez",
        log_path=tmp_path / "ops.log",
    )
    server.start(timeout_s=60)
    try:
        tools, status, health = over_http(
            f"http://127.0.0.1:{port}/mcp",
            [
                ("list_tools", {}),
                ("get_system_status", {}),
                ("verify_model_health", {"max_tokens": 4}),
            ],
        )
    finally:
        server.stop(grace_s=5)
    # every tool the stdio server lists (test_server_files.TOOLS), each with its output schema
    assert {t.name for t in tools} == TOOLS and all(t.output_schema for t in tools)
    assert data(status)["gateway"]["serving"] is True
    assert data(health)["passed"] is True
