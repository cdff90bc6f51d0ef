"""The relay's counting and the one mapping from upstream failures to client errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.errors import OpenAIError, engine_message
from gateway.upstream import StreamStats, relay_sse, upstream_error

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


async def relay(*pieces: bytes, error: Exception | None = None) -> tuple[StreamStats, list[bytes]]:
    out: list[bytes] = []

    async def emit(data: bytes) -> None:
        out.append(data)

    stats = StreamStats()
    await relay_sse(Pieces(*pieces, error=error), emit, stats)  # type: ignore[arg-type]
    return stats, out


async def test_bytes_pass_through_unchanged_and_events_are_counted() -> None:
    pieces = (b"data: a\n\ndata: b\n\n", b"data: c\n\n", b"data: [DONE]\n\n")
    stats, out = await relay(*pieces)
    assert out == list(pieces)
    assert stats.events == 4 and stats.done and stats.first_chunk_at is not None
    # Without a usage event: one token per content event (role event and [DONE] excluded).
    assert stats.completion_tokens(role_events=1) == 2


async def test_usage_event_wins_even_split_across_pieces() -> None:
    usage = b'data: {"usage":{"prompt_tokens":5,"completion_tokens":42,"total_tokens":47}}\n\n'
    stats, _ = await relay(b"data: x\n\n", usage[:20], usage[20:], b"data: [DONE]\n\n")
    assert stats.completion_tokens(role_events=1) == 42


async def test_the_last_usage_counts_when_a_piece_holds_several() -> None:
    first = b'data: {"usage":{"completion_tokens":1}}\n\n'
    last = b'data: {"usage":{"completion_tokens":9}}\n\ndata: [DONE]\n\n'
    stats, _ = await relay(first + last)
    assert stats.completion_tokens(0) == 9


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
