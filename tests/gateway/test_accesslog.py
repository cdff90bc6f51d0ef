"""The access log: one parseable line per request, buffered and flushed."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from gateway.edge.accesslog import AccessLog

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def emit(log: AccessLog, **kw: object) -> None:
    args = {"request_id": b"r-1", "key": 'team "a"', "route": "chat", "status": 200,
            "duration_s": 0.0123, "completion_tokens": 7, "ttft_s": 0.004,
            "replica": "10.0.0.5:8000"}  # fmt: skip
    log.emit(**{**args, **kw})  # type: ignore[arg-type]


class Writes(io.StringIO):
    """A stream that records each write and wakes a waiter."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.written = asyncio.Event()

    def write(self, s: str) -> int:
        self.writes.append(s)
        self.written.set()
        return super().write(s)


async def test_json_lines_parse_and_are_flushed_after_a_moment() -> None:
    out = Writes()
    log = AccessLog("json", out)
    emit(log)
    await asyncio.sleep(0)  # the loop turns (a call_soon flush would run here): still buffered
    emit(log, status=429, completion_tokens=None, ttft_s=None)
    assert out.writes == []  # buffered
    await asyncio.wait_for(out.written.wait(), 60)  # a bound against a hang, not a speed check
    # one write for both lines, from the timer the first line set
    assert len(out.writes) == 1
    text = out.writes[0]
    first, second = (json.loads(line) for line in text.splitlines())
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
