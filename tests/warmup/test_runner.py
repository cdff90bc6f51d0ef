"""The runner: stall maths, error classification, and real steps against the CPU engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest

from env.settings import WarmupSettings
from tests.support.engine import Engine
from tests.support.process import free_port
from warmup.plan import Step
from warmup.progress import PlainReporter
from warmup.runner import EngineLost, Runner, StepFailed, engine_error, is_stall

T = TypeVar("T")


def test_stall_needs_both_the_ratio_and_the_absolute_gap() -> None:
    assert is_stall(132.0, 1.5, ratio=3.0, min_s=2.0)  # the seeds' 132 s first hit
    assert not is_stall(0.003, 0.001, ratio=3.0, min_s=2.0)  # 3x, but only 2 ms
    assert not is_stall(10.0, 5.0, ratio=3.0, min_s=2.0)  # 5 s slower, but only 2x
    assert not is_stall(1.0, 2.0, ratio=3.0, min_s=0.0)  # second slower


def test_engine_error_extracts_the_engines_message() -> None:
    openai = httpx.Response(400, json={"error": {"message": "too long", "code": 400}})
    assert engine_error(openai) == "too long"
    vllm_flat = httpx.Response(400, json={"object": "error", "message": "bad logprobs"})
    assert engine_error(vllm_flat) == "bad logprobs"
    assert engine_error(httpx.Response(502, text="upstream gone")) == "upstream gone"


def run_with_engine(url: str, settings: WarmupSettings, use: Callable[[Runner], Awaitable[T]]) -> T:
    async def go() -> T:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            runner = Runner(client, "gemma-4-tiny", settings, PlainReporter())
            return await use(runner)

    return asyncio.run(go())


def test_connection_refused_mid_plan_is_engine_lost_not_a_failure() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    step = Step("chat", "chat", "x", max_tokens=1)
    with pytest.raises(EngineLost) as err:
        run_with_engine(url, WarmupSettings(), lambda r: r.run_step(step))
    assert err.value.step == "chat"


@pytest.mark.engine
def test_every_step_kind_passes_and_checks_what_it_claims(engine: Engine) -> None:
    settings = WarmupSettings(system_prompt="You are terse. " * 60, logprobs=3)
    steps = [
        Step("chat", "chat", "x", max_tokens=2),
        Step("chat_stream", "chat_stream", "x", max_tokens=2),
        Step("tools", "tools", "x", max_tokens=2),
        Step("reasoning", "reasoning", "x", max_tokens=2),
        Step("prompt_100", "prompt", "x", prompt_tokens=100),
        Step("concurrency_8", "concurrency", "x", concurrency=8, max_tokens=3),
        Step("logprobs", "logprobs", "x", logprobs=3, max_tokens=2),
        Step("prompt_logprobs_300", "prompt_logprobs", "x", prompt_tokens=300, logprobs=1),
        Step("prefix", "prefix", "x", max_tokens=2, stall_check=False),
    ]

    async def run_all(runner: Runner) -> list:
        return [await runner.run_step(s) for s in steps]

    results = {r.step.name: r for r in run_with_engine(engine.url, settings, run_all)}
    assert all(r.passed and r.first_s and r.second_s for r in results.values())
    assert results["chat_stream"].info["chunks"] >= 1
    assert results["tools"].info["tool_parser_runs"] >= 1, "the gemma4 tool parser ran"
    assert results["prompt_100"].info["prompt_tokens"] == 100
    assert results["concurrency_8"].info == {"requests": 8, "completion_tokens": 24}
    assert results["logprobs"].info["logprob_tokens"] >= 1
    assert results["prompt_logprobs_300"].info["prompt_logprobs"] == 300
    # second hit reuses the ~400-token system prompt: whole KV blocks come from the cache
    assert results["prefix"].info["prefix_cache_hit_tokens"] > 0


@pytest.mark.engine
def test_a_step_beyond_the_context_fails_with_the_engines_status_and_message(
    engine: Engine,
) -> None:
    n = engine.settings.max_model_len  # no room left for even one generated token
    step = Step(f"prompt_{n}", "prompt", "x", prompt_tokens=n)
    with pytest.raises(StepFailed) as err:
        run_with_engine(engine.url, WarmupSettings(), lambda r: r.run_step(step))
    assert err.value.step == f"prompt_{n}"
    assert err.value.http_status == 400
    assert "max_tokens" in err.value.message  # vLLM: "max_tokens must be at least 1, got 0"
    assert f"step prompt_{n} failed: HTTP 400: " in str(err.value)


@pytest.mark.engine
def test_more_logprobs_than_the_engine_allows_fails(engine: Engine) -> None:
    step = Step("logprobs", "logprobs", "x", logprobs=50, max_tokens=1)
    with pytest.raises(StepFailed) as err:
        run_with_engine(engine.url, WarmupSettings(), lambda r: r.run_step(step))
    assert err.value.http_status == 400 and "logprobs" in err.value.message


@pytest.mark.engine
def test_the_budget_bounds_the_plan(engine: Engine) -> None:
    step = Step("concurrency_64", "concurrency", "x", concurrency=64, max_tokens=64)
    with pytest.raises(StepFailed) as err:
        run_with_engine(engine.url, WarmupSettings(budget_s=0.05), lambda r: r.run_step(step))
    assert err.value.http_status is None
    assert "no answer within" in err.value.message or "budget" in err.value.message
