"""Waiting for the engine: refusals are "not yet", only the ready timeout ends the wait."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import pytest

from tests.support.engine import Engine
from tests.support.process import free_port
from warmup.progress import PlainReporter
from warmup.wait import EngineNotReady, wait_ready


def test_a_closed_port_is_waited_on_until_the_timeout_with_visible_progress() -> None:
    log = io.StringIO()
    url = f"http://127.0.0.1:{free_port()}"

    async def go() -> None:
        async with httpx.AsyncClient(base_url=url) as client:
            await wait_ready(client, timeout_s=1.2, reporter=PlainReporter(log), poll_s=0.2)

    start = time.monotonic()
    with pytest.raises(EngineNotReady, match="connection refused"):
        asyncio.run(go())
    assert 1.2 <= time.monotonic() - start < 10
    assert "waiting for engine" in log.getvalue() and "connection refused" in log.getvalue()


@pytest.mark.engine
def test_a_ready_engine_returns_its_served_model(engine: Engine) -> None:
    log = io.StringIO()

    async def go() -> str:
        async with httpx.AsyncClient(base_url=engine.url) as client:
            return await wait_ready(client, timeout_s=30, reporter=PlainReporter(log))

    assert asyncio.run(go()) == engine.settings.served_model_name
    assert "engine ready" in log.getvalue()
