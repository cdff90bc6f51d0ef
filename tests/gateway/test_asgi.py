"""ASGI plumbing and the sink, driven with scripted ``receive``/``send`` (no server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.apis.chat import STREAM as CHAT_STREAM
from gateway.edge.asgi import ClientGone, DisconnectGuard, read_body, request_id
from gateway.errors import OpenAIError
from gateway.routes.openai import AsgiSink

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers)}


def receiver(*messages: dict[str, Any]) -> Any:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)

    async def receive() -> dict[str, Any]:
        return await queue.get()

    receive.queue = queue  # type: ignore[attr-defined]
    return receive


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


async def test_read_body_joins_chunks() -> None:
    got = await read_body(scope(), receiver(body(b"ab", True), body(b"cd")), 10)
    assert got == b"abcd"


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    receive = receiver()  # nothing to read: reading would hang
    with pytest.raises(OpenAIError) as info:
        await read_body(scope((b"content-length", b"11")), receive, 10)
    assert (info.value.status, info.value.code) == (413, "request_too_large")


async def test_chunked_body_over_the_limit_is_refused_as_it_arrives() -> None:
    receive = receiver(body(b"x" * 6, True), body(b"x" * 6, True))  # no final chunk needed
    with pytest.raises(OpenAIError) as info:
        await read_body(scope(), receive, 10)
    assert info.value.status == 413


async def test_a_disconnect_while_reading_is_client_gone() -> None:
    with pytest.raises(ClientGone):
        await read_body(scope(), receiver(body(b"ab", True), {"type": "http.disconnect"}), 10)


def test_request_id_kept_when_sane_replaced_when_not() -> None:
    assert request_id(scope((b"x-request-id", b"abc-123"))) == b"abc-123"
    fresh = request_id(scope((b"x-request-id", b"bad id\r\n")))
    assert fresh != b"bad id\r\n" and len(fresh) == 24
    assert request_id(scope()) != request_id(scope())


async def test_disconnect_guard_cancels_the_request_and_absorbs_it() -> None:
    receive = receiver()
    outcome: list[str] = []

    async def request() -> None:
        guard = DisconnectGuard(receive)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            outcome.append("absorbed" if guard.absorb() else "re-raised")
        finally:
            guard.close()

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    receive.queue.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(task, 30)
    assert outcome == ["absorbed"] and not task.cancelled()


async def test_disconnect_after_finish_cancels_nothing() -> None:
    receive = receiver()
    done = asyncio.Event()

    async def request() -> str:
        guard = DisconnectGuard(receive)
        guard.finish()
        receive.queue.put_nowait({"type": "http.disconnect"})
        await asyncio.sleep(0.05)  # the watcher sees the disconnect meanwhile
        done.set()
        guard.close()
        return "completed"

    assert await asyncio.wait_for(request(), 30) == "completed" and done.is_set()


async def test_a_foreign_cancel_is_not_absorbed() -> None:
    receive = receiver()

    async def request() -> None:
        guard = DisconnectGuard(receive)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            assert not guard.absorb()
            raise
        finally:
            guard.close()

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)


async def test_sink_error_before_start_is_a_status_with_json() -> None:
    send = Recorder()
    sink = AsgiSink(send, b"r1", CHAT_STREAM.error_event)
    await sink.fail(OpenAIError(429, "busy", code="queue_full", retry_after=3))
    start, end = send.messages
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"3" and headers[b"x-request-id"] == b"r1"
    assert b'"code":"queue_full"' in end["body"]


async def test_sink_error_after_start_is_a_terminal_sse_event() -> None:
    send = Recorder()
    sink = AsgiSink(send, b"r1", CHAT_STREAM.error_event)
    await sink.keepalive()
    await sink.keepalive()
    await sink.fail(OpenAIError(429, "waited too long", code="wait_timeout"))
    kinds = [m["type"] for m in send.messages]
    assert kinds == ["http.response.start"] + ["http.response.body"] * 3  # headers once
    assert send.messages[0]["status"] == 200
    assert send.messages[1]["body"] == b": queued\n\n"
    last = send.messages[-1]
    assert last["more_body"] is False
    assert last["body"].startswith(b'data: {"error"') and last["body"].endswith(b"data: [DONE]\n\n")
