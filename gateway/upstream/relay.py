"""Upstream pieces shared by the token path and control traffic: fault mapping, SSE relay.

Streaming is a passthrough of the engine's bytes (no decoding, no JSON parsing per chunk). The
relay only counts SSE event separators (``bytes.count``, in C) and keeps the last pieces so the
token count can be read once from the final usage event. Chat and Completions streams go through
an ``EventFilter`` (a few C-level searches per piece): whole events only (an event cut by a dying
engine never reaches the client), the engine's own error event held back and raised as
``EngineErrorEvent`` (the service answers it in OpenAI's shape, or continues the stream), and,
for a resumable stream (``gateway/resume/``), the pieces kept and the token ids the gateway asked
for put back to ``null`` before the client sees them.

Timeouts: a stream times out on *silence* (the read timeout applies per wait for data), never on
its total duration, so a long generation is fine while a hung engine is not. Cancellation
(client disconnect) closes the upstream connection, which makes vLLM abort the request and free
its slot.

Two clients reach the engine: ``gateway.upstream.wire.EnginePool`` carries the completions themselves
(the hot path, issue 7) and the monitor's polls; a small httpx client (``make_client``) carries
/tokenize and the passthrough routes. Both raise httpx's exception types, so
``upstream_error`` is the one mapping from an upstream failure to what the client is told.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import httpx

from gateway.apis import OPENAI_STREAM, StreamFormat
from gateway.errors import OpenAIError, engine_down
from gateway.upstream.wire import EngineResponse

# The usage and the end are read once from the stream's tail: the last pieces, so that an event
# split over several reads is still whole.
_TAIL_PIECES = 16


def make_client(
    base_url: str, max_connections: int, connect_timeout_s: float, read_timeout_s: float
) -> httpx.AsyncClient:
    """A keep-alive httpx client for /tokenize and passthroughs (a few connections)."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        base_url=base_url,
        limits=limits,
        timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=connect_timeout_s),
        headers={"accept-encoding": "identity", "user-agent": "gemma4-gateway"},
        trust_env=False,  # never route the engine through an environment proxy
    )


def upstream_error(
    exc: httpx.HTTPError, *, streaming: bool = False, counting: bool = False
) -> OpenAIError:
    """An httpx failure as the OpenAI error the client gets (status, code, Retry-After).

    ``counting``: the prompt's token count (``tokens.py``), which comes before admission: any
    failure there is a 503 to retry (a slow count is ``tokenize_timeout``, the rest
    ``engine_down``), never a 502/504 for a request that has not been sent yet."""
    if counting:
        if isinstance(exc, httpx.TimeoutException):
            return OpenAIError(503, "the engine did not count the prompt in time",
                               code="tokenize_timeout", retry_after=5)  # fmt: skip
        return engine_down()
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return engine_down()
    if isinstance(exc, httpx.PoolTimeout):
        return OpenAIError(
            503, "no upstream connection available", code="upstream_pool", retry_after=1
        )
    if isinstance(exc, httpx.ReadTimeout):
        what = "sent nothing for too long" if streaming else "did not answer in time"
        return OpenAIError(504, f"the engine {what}", code="upstream_timeout")
    return OpenAIError(
        502, f"the connection to the engine was lost ({type(exc).__name__})",
        code="engine_connection_lost", retry_after=5,
    )  # fmt: skip


def _boundary_before(data: bytes, end: int) -> int:
    """Offset just past the last SSE event separator before ``end`` (LF or CRLF), or 0."""
    a = data.rfind(b"\n\n", 0, end)
    b = data.rfind(b"\n\r\n", 0, end)
    return max(a + 2 if a >= 0 else 0, b + 3 if b >= 0 else 0)


def _boundary_after(data: bytes, start: int) -> int:
    """Offset just past the first SSE event separator at or after ``start``, or the end."""
    a = data.find(b"\n\n", start)
    b = data.find(b"\n\r\n", start)
    ends = [x for x in (a + 2 if a >= 0 else -1, b + 3 if b >= 0 else -1) if x >= 0]
    return min(ends) if ends else len(data)


def _without_usage(whole: bytes) -> bytes:
    """Whole events less the usage event (model output is JSON-escaped: no false match)."""
    at = whole.find(b'"usage":{')
    if at < 0:
        return whole
    return whole[: _boundary_before(whole, at)] + whole[_boundary_after(whole, at) :]


class UsageStrip:
    """Drops the usage event from an OpenAI stream: the gateway asked the engine for it (token
    accounting) but the client did not. Whole events pass on as they complete; a partial one
    waits for its end (a client cannot use half an event anyway)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.pending + chunk if self.pending else chunk
        end = _boundary_before(data, len(data))
        self.pending = data[end:]
        return _without_usage(data[:end])

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return rest


# vLLM's terminal error event: ``data: {"error": {..., "code": 500}}`` (``json.dumps``, with a
# space) then ``data: [DONE]``; the gateway's own are compact. JSON escapes every quote inside a
# string, so this never matches model output.
_ERROR_EVENT = b'data: {"error"'
# Token ids vLLM sends when asked (``return_token_ids``: ``token_ids`` and ``prompt_token_ids``);
# unasked, it sends the same keys as null.
_TOKEN_IDS = b'token_ids":['


def _null_token_ids(data: bytes) -> bytes:
    """Every ``..token_ids":[...]`` as ``..token_ids":null`` (``bytes.find``: a regex cost
    several times more, a sizeable part of the gateway's CPU per streamed token)."""
    at = data.find(_TOKEN_IDS)
    if at < 0:
        return data
    head = b""
    while at >= 0 and (end := data.find(b"]", at)) >= 0:
        head += data[: at + 11] + b"null"
        data = data[end + 1 :]
        at = data.find(_TOKEN_IDS)
    return head + data


class Capture(Protocol):
    """Where a resumable stream's events are kept (``gateway.resume.transcript.Transcript``)."""

    def append(self, events: bytes) -> None: ...


class EngineErrorEvent(Exception):
    """The engine ended a stream with its own error event (held back from the client)."""

    def __init__(self, event: bytes) -> None:
        super().__init__(event[:200].decode(errors="replace"))
        self.event = event

    @property
    def status(self) -> int:
        return self.error().status

    def error(self) -> OpenAIError:
        """The event in OpenAI's shape: vLLM's message, a status from its integer ``code``
        (``type: "InternalServerError"`` and ``code: 500`` are not OpenAI's), ``engine_error``."""
        data = self.event.split(b"\n", 1)[0].removeprefix(b"data: ")
        err: object = None
        with contextlib.suppress(ValueError, AttributeError, RecursionError):
            err = json.loads(data).get("error")
        err = err if isinstance(err, dict) else {}
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 502
        message = str(err.get("message") or "the engine failed while streaming")[:500]
        param = err.get("param") if isinstance(err.get("param"), str) else None
        return OpenAIError(status, message, code="engine_error", param=param)


class EventFilter:
    """A Chat or Completions stream on its way to the client, whole events at a time.

    Per piece: a partial event waits for its end; the engine's error event and what follows it
    are held back (``error``; the relay raises ``EngineErrorEvent``); ``rewrite`` turns a
    continuation's events into the original stream's (``gateway.resume.rewrite``); ``capture``
    keeps what the client is sent; token ids the gateway asked for go back to ``null``; the
    usage event the gateway asked for is dropped. Without ``capture`` and ``rewrite`` it costs
    two or three C-level searches per piece."""

    __slots__ = ("capture", "error", "pending", "rewrite", "strip_ids", "strip_usage")

    def __init__(
        self,
        strip_usage: bool = False,
        strip_ids: bool = False,
        capture: Capture | None = None,
        rewrite: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.strip_usage = strip_usage
        self.strip_ids = strip_ids
        self.capture = capture
        self.rewrite = rewrite
        self.pending = b""
        self.error: bytes | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self.pending + chunk if self.pending else chunk
        if data.endswith(b"\n\n"):  # whole events: the common case
            self.pending = b""
        else:
            end = _boundary_before(data, len(data))
            self.pending = data[end:]
            data = data[:end]
        return self.events(data) if data else b""

    def events(self, data: bytes) -> bytes:
        """Whole events as the client gets them (also used for events the gateway writes)."""
        if _ERROR_EVENT in data:
            at = data.find(_ERROR_EVENT)
            self.error = data[at : _boundary_after(data, at)]
            data = data[:at]
        if self.rewrite is not None and data:
            data = self.rewrite(data)
        if self.capture is not None and data:
            self.capture.append(data)
        if self.strip_ids:
            data = _null_token_ids(data)
        return _without_usage(data) if self.strip_usage else data

    def flush(self) -> bytes:
        """The end of the stream: an unterminated last event is dropped unless it is the end
        marker (half an event would corrupt the next one the client reads)."""
        rest, self.pending = self.pending, b""
        return rest if rest.startswith(b"data: [DONE]") and self.error is None else b""


class StreamStats:
    """What the relay learned about one stream, without parsing it."""

    __slots__ = ("done", "events", "first_chunk_at", "format", "strip_usage", "tail")

    def __init__(self, format: StreamFormat = OPENAI_STREAM, strip_usage: bool = False) -> None:
        self.format = format
        self.strip_usage = strip_usage  # the usage event is counted, not relayed
        self.events = 0
        self.tail = b""
        self.done = False
        self.first_chunk_at: float | None = None

    def completion_tokens(self) -> int:
        """From the usage event when there is one, else one token per event."""
        found = self.format.usage.findall(self.tail)  # the last one: pieces hold several events
        if found:
            return int(found[-1])
        return max(0, self.events - self.format.role_events - (1 if self.done else 0))


async def relay_sse(
    response: EngineResponse,
    emit: Callable[[bytes], Awaitable[None]],
    stats: StreamStats,
    filter: EventFilter | None = None,
) -> None:
    """Hand the engine's SSE bytes to ``emit`` as they arrive (through ``filter``, else as they
    are but for the usage event the client did not ask for). Raises ``httpx.HTTPError``, and
    ``EngineErrorEvent`` when ``filter`` held back the engine's error event."""
    recent: deque[bytes] = deque(maxlen=_TAIL_PIECES)
    events = 0
    strip = filter if filter is not None else UsageStrip() if stats.strip_usage else None
    try:
        async for chunk in response.chunks():
            if stats.first_chunk_at is None:
                stats.first_chunk_at = time.perf_counter()
            if strip is None:
                await emit(chunk)
            elif out := strip.feed(chunk):
                await emit(out)
            events += chunk.count(b"\n\n")
            recent.append(chunk)
            if filter is not None and filter.error is not None:
                raise EngineErrorEvent(filter.error)
        if strip is not None and (rest := strip.flush()):
            await emit(rest)
    finally:
        stats.events = events
        stats.tail = b"".join(recent)
        stats.done = stats.format.finished(stats.tail) and (filter is None or filter.error is None)
