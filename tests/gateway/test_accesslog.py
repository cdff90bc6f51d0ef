"""The access log: one parseable line per request, buffered and flushed."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from gateway.accesslog import FLUSH_S, AccessLog

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def emit(log: AccessLog, **kw: object) -> None:
    args = {"request_id": b"r-1", "key": 'team "a"', "route": "chat", "status": 200,
            "duration_s": 0.0123, "completion_tokens": 7, "ttft_s": 0.004,
            "replica": "10.0.0.5:8000"}  # fmt: skip
    log.emit(**{**args, **kw})  # type: ignore[arg-type]


async def test_json_lines_parse_and_are_flushed_after_a_moment() -> None:
    out = io.StringIO()
    log = AccessLog("json", out)
    emit(log)
    emit(log, status=429, completion_tokens=None, ttft_s=None)
    assert out.getvalue() == ""  # buffered
    await asyncio.sleep(FLUSH_S * 3)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["key"] == 'team "a"' and first["request_id"] == "r-1"
    assert (first["status"], first["completion_tokens"], first["ttft_ms"]) == (200, 7, 4.0)
    assert first["duration_ms"] == 12.3 and first["prompt_tokens"] is None
    assert first["replica"] == "10.0.0.5:8000"  # which replica answered
    assert (second["status"], second["ttft_ms"]) == (429, None)


def test_text_lines_and_off() -> None:
    out = io.StringIO()
    log = AccessLog("text", out)
    emit(log)  # no running loop: written at once
    assert out.getvalue().startswith('request_id=r-1 key=team "a" route=chat status=200')
    silent = io.StringIO()
    emit(AccessLog("off", silent))
    assert silent.getvalue() == ""
