"""``tests.support.wait``: a timeout or a refused connection is "not yet"; anything else is real."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.wait import wait_until, wait_until_async


def scripted(*steps: object):
    """A probe that raises or returns each step in turn, counting its calls."""
    calls = []

    def probe() -> object:
        step = steps[len(calls)]
        calls.append(step)
        if isinstance(step, BaseException):
            raise step
        return step

    return probe, calls


def test_timeouts_and_refusals_are_not_yet() -> None:
    probe, calls = scripted(
        httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), None, 0, {"state": "ready"}
    )
    assert wait_until(probe, "ready", 30, interval_s=0) == {"state": "ready"}
    assert len(calls) == 5


def test_other_errors_propagate_at_once() -> None:
    request = httpx.Request("GET", "http://x/health")
    status = httpx.HTTPStatusError("500", request=request, response=httpx.Response(500))
    probe, calls = scripted(httpx.ReadTimeout("slow"), status, "never reached")
    with pytest.raises(httpx.HTTPStatusError):
        wait_until(probe, "healthy", 30, interval_s=0)
    assert len(calls) == 2
    probe, calls = scripted(AssertionError("a wrong answer"), "never reached")
    with pytest.raises(AssertionError, match="a wrong answer"):
        wait_until(probe, "healthy", 30, interval_s=0)


def test_the_deadline_names_the_condition_the_last_value_and_the_last_error() -> None:
    probe, _ = scripted(httpx.ConnectTimeout("connect timed out"), *[False] * 1000)
    with pytest.raises(AssertionError) as info:
        wait_until(probe, "engine down", 0.05, interval_s=0.01)
    text = str(info.value)
    assert text.startswith("not engine down after 0.05 s; last value: False")
    assert "ConnectTimeout('connect timed out')" in text


def test_async_variant() -> None:
    probe, calls = scripted(httpx.PoolTimeout("busy"), httpx.ReadError("reset"), 7)

    async def aprobe() -> object:
        return probe()

    assert asyncio.run(wait_until_async(aprobe, "seven", 30, interval_s=0)) == 7
    assert len(calls) == 3
    never, _ = scripted(*[None] * 1000)

    async def anever() -> object:
        return never()

    with pytest.raises(AssertionError) as info:
        asyncio.run(wait_until_async(anever, "served", 0.05, interval_s=0.01))
    assert str(info.value) == "not served after 0.05 s; last value: None"
