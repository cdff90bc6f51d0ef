"""The relay's counting and the one mapping from upstream failures to client errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.apis import OPENAI_STREAM, StreamFormat
from gateway.apis.chat import STREAM as CHAT_STREAM
from gateway.apis.messages import STREAM as MESSAGES_STREAM
from gateway.apis.responses import STREAM as RESPONSES_STREAM
from gateway.errors import OpenAIError
from gateway.upstream.relay import StreamStats, relay_sse, upstream_error
from protocol.engine_errors import engine_message

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Pieces:
    def __init__(self, *pieces: bytes, error: Exception | None = None) -> None:
        self.pieces = pieces
        self.error = error

    async def chunks(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            yield p
        if self.error is not None:
            raise self.error


async def relay(
    *pieces: bytes, error: Exception | None = None, fmt: StreamFormat = CHAT_STREAM
) -> tuple[StreamStats, list[bytes]]:
    out: list[bytes] = []

    async def emit(data: bytes) -> None:
        out.append(data)

    stats = StreamStats(fmt)
    await relay_sse(Pieces(*pieces, error=error), emit, stats)  # type: ignore[arg-type]
    return stats, out


async def test_bytes_pass_through_unchanged_and_events_are_counted() -> None:
    pieces = (b"data: a\n\ndata: b\n\n", b"data: c\n\n", b"data: [DONE]\n\n")
    stats, out = await relay(*pieces)
    assert out == list(pieces)
    assert stats.events == 4 and stats.done and stats.first_chunk_at is not None
    # Without a usage event: one token per content event (role event and [DONE] excluded).
    assert stats.completion_tokens() == 2


async def test_usage_event_wins_even_split_across_pieces() -> None:
    usage = b'data: {"usage":{"prompt_tokens":5,"completion_tokens":42,"total_tokens":47}}\n\n'
    stats, _ = await relay(b"data: x\n\n", usage[:20], usage[20:], b"data: [DONE]\n\n")
    assert stats.completion_tokens() == 42


async def test_the_last_usage_counts_when_a_piece_holds_several() -> None:
    first = b'data: {"usage":{"completion_tokens":1}}\n\n'
    last = b'data: {"usage":{"completion_tokens":9}}\n\ndata: [DONE]\n\n'
    stats, _ = await relay(first + last, fmt=OPENAI_STREAM)
    assert stats.completion_tokens() == 9


async def test_a_stream_without_done_is_marked_unfinished() -> None:
    stats, _ = await relay(b"data: a\n\n")
    assert not stats.done


async def test_a_failure_mid_stream_still_records_what_was_relayed() -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await relay(b"data: a\n\n", error=httpx.RemoteProtocolError("gone"))


@pytest.mark.parametrize(
    "exc,status,code",
    [
        (httpx.ConnectError("x"), 503, "engine_down"),
        (httpx.ConnectTimeout("x"), 503, "engine_down"),
        (httpx.PoolTimeout("x"), 503, "upstream_pool"),
        (httpx.ReadTimeout("x"), 504, "upstream_timeout"),
        (httpx.RemoteProtocolError("x"), 502, "engine_connection_lost"),
        (httpx.ReadError("x"), 502, "engine_connection_lost"),
    ],
)
def test_upstream_error_mapping(exc: httpx.HTTPError, status: int, code: str) -> None:
    err = upstream_error(exc)
    assert (err.status, err.code) == (status, code)


def test_read_timeout_wording_differs_for_streams() -> None:
    assert "sent nothing" in upstream_error(httpx.ReadTimeout("x"), streaming=True).message
    assert "did not answer" in upstream_error(httpx.ReadTimeout("x")).message


@pytest.mark.parametrize(
    "body,message",
    [
        (
            b'{"error":{"message":"bad template","type":"BadRequestError","code":400}}',
            "bad template",
        ),
        (b'{"message":"old shape"}', "old shape"),
        (b'{"detail":"Not Found"}', "Not Found"),
        (b'{"error":"plain"}', "plain"),
        (b"Internal Server Error", "Internal Server Error"),
        (b"[" * 5000, "[" * 500),  # deep nesting: no RecursionError, the text is cut
    ],
)
def test_engine_message(body: bytes, message: str) -> None:
    assert engine_message(body) == message


def test_one_error_two_renderings() -> None:
    """The same OpenAIError as an HTTP body and as a terminal SSE event."""
    err = OpenAIError(429, "busy", code="queue_full", retry_after=7, headers={"X-Extra": "1"})
    payload = {"error": {"message": "busy", "type": "rate_limit_error", "param": None,
                         "code": "queue_full"}}  # fmt: skip

    assert json.loads(err.body()) == payload
    event = err.sse_event()
    assert event.startswith(b"data: ") and event.endswith(b"\n\ndata: [DONE]\n\n")
    assert json.loads(event[6 : event.index(b"\n\n")]) == payload
    assert err.header_list() == [(b"x-extra", b"1"), (b"retry-after", b"7")]


async def test_responses_stream_ends_with_its_completed_event() -> None:
    text = "x" * 100_000  # the completed event carries the whole response after its name
    completed = (b'event: response.completed\ndata: {"type":"response.completed","response":'
                 b'{"output_text":"' + text.encode() + b'","usage":{"input_tokens":3,'
                 b'"input_tokens_details":{"cached_tokens":0},"output_tokens":12}}}\n\n')  # fmt: skip
    delta = b'event: response.output_text.delta\ndata: {"delta":"data: [DONE]"}\n\n'
    stats, _ = await relay(delta, completed[:70_000], completed[70_000:], fmt=RESPONSES_STREAM)
    assert stats.done and stats.completion_tokens() == 12
    stats, _ = await relay(delta, fmt=RESPONSES_STREAM)  # cut after a delta: not finished
    assert not stats.done


async def test_messages_stream_ends_with_message_stop() -> None:
    pieces = (b'event: message_start\ndata: {"type":"message_start"}\n\n',
              b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":5}}\n\n',
              b'event: message_stop\ndata: {"type":"message_stop"}\n\n')  # fmt: skip
    stats, _ = await relay(*pieces, fmt=MESSAGES_STREAM)
    assert stats.done and stats.completion_tokens() == 5
    stats, _ = await relay(*pieces[:2], fmt=MESSAGES_STREAM)
    assert not stats.done


def test_each_api_frames_its_terminal_error() -> None:
    err = OpenAIError(503, "engine down", code="engine_down")
    assert CHAT_STREAM.error_event(err).endswith(b"data: [DONE]\n\n")
    responses = RESPONSES_STREAM.error_event(err)
    assert responses.startswith(b"event: error\ndata: ") and b'"code":"engine_down"' in responses
    anthropic = MESSAGES_STREAM.error_event(err)
    assert b'"type":"overloaded_error"' in anthropic and b'"message":"engine down"' in anthropic
