"""The engine connection: a sharded httpx pool, byte-exact SSE relay, upstream fault mapping.

Streaming is a passthrough of the engine's bytes (``aiter_raw``: no decoding, no re-framing, no
JSON parsing per chunk). The relay only counts SSE event separators (``bytes.count``, in C) and
keeps the last two chunks so the token count can be read once from the final usage event.

Timeouts: a stream times out on *silence* (httpx's read timeout applies per read), never on its
total duration, so a long generation is fine while a hung engine is not. Cancellation (client
disconnect) closes the upstream connection, which makes vLLM abort the request and free its slot.

Pooling: httpcore's ``AsyncConnectionPool`` scans every pooled connection (and every waiting
request) in ``_assign_requests_to_connections`` on each request start *and* each response close,
so one pool of N connections costs O(N) per event and O(N^2) per round of N streams. At 256
streams that scan took 74% of the gateway's CPU and throughput fell to 0.06x direct (issue 7).
``ShardedTransport`` keeps every pool small (``SHARD_CONNECTIONS``) and puts several behind one
transport, which picks the least-busy shard per request: the per-event cost is bounded by the
shard size, whatever the concurrency.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Sequence

import httpx

from gateway.asgi import Send
from gateway.errors import OpenAIError

_USAGE_RE = re.compile(rb'"usage":\{[^{}]*?"completion_tokens":(\d+)')
_DONE = b"data: [DONE]"


# Connections per httpcore pool: big enough that keep-alive reuse works, small enough that the
# pool's per-event scan stays cheap (a prototype at 256 streams: 16 -> 0.11 CPU s / 1k tokens).
SHARD_CONNECTIONS = 16


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small ``AsyncHTTPTransport`` pools behind one transport; least-busy routing.

    A shard is "busy" with a request from the moment it is routed there until its response
    stream is closed (or the request fails or is cancelled before a response): that is exactly
    the time it holds one of the shard's connections. Choosing the least-busy shard means a
    shard only waits for a connection when every shard is full, i.e. never below
    ``max_connections`` in-flight requests.
    """

    def __init__(self, shards: Sequence[httpx.AsyncBaseTransport]) -> None:
        if not shards:
            raise ValueError("at least one shard")
        self.shards = list(shards)
        self.busy = [0] * len(self.shards)

    @classmethod
    def for_connections(
        cls, max_connections: int, per_shard: int = SHARD_CONNECTIONS, keepalive_expiry: float = 60
    ) -> ShardedTransport:
        """Enough ``per_shard``-connection pools for ``max_connections`` concurrent requests."""
        limits = httpx.Limits(
            max_connections=per_shard,
            max_keepalive_connections=per_shard,
            keepalive_expiry=keepalive_expiry,
        )
        n = max(1, math.ceil(max_connections / per_shard))
        # One TLS context for all shards: each transport would otherwise load the CA bundle
        # (~25 ms and a few MiB apiece), although the engine is normally plain http.
        tls = httpx.create_ssl_context(trust_env=False)
        return cls(
            [httpx.AsyncHTTPTransport(verify=tls, limits=limits, trust_env=False) for _ in range(n)]
        )

    def _pick(self) -> int:
        busy = self.busy
        return busy.index(min(busy))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = self._pick()
        self.busy[i] += 1
        try:
            response = await self.shards[i].handle_async_request(request)
        except BaseException:  # failed or cancelled before a response: nothing to close later
            self.busy[i] -= 1
            raise
        response.stream = _ReleasingStream(response.stream, self, i)
        return response

    def release(self, i: int) -> None:
        self.busy[i] -= 1

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """The shard's response stream; closing it (once) marks the shard one request less busy."""

    __slots__ = ("_inner", "_shard", "_transport")

    def __init__(self, inner: httpx.AsyncByteStream, transport: ShardedTransport, shard: int):
        self._inner = inner
        self._transport: ShardedTransport | None = transport
        self._shard = shard

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()  # the inner iterator itself: no extra layer per chunk

    async def aclose(self) -> None:
        # Release before awaiting: a cancellation during the inner close must not leak a count.
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.release(self._shard)
        await self._inner.aclose()


def make_client(
    base_url: str, max_connections: int, connect_timeout_s: float, read_timeout_s: float
) -> httpx.AsyncClient:
    """A keep-alive client with room for ``max_connections`` concurrent upstream requests."""
    return httpx.AsyncClient(
        base_url=base_url,
        transport=ShardedTransport.for_connections(max_connections),
        timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=connect_timeout_s),
        headers={"accept-encoding": "identity", "user-agent": "gemma4-gateway"},
        trust_env=False,  # never route the engine through an environment proxy
    )


def upstream_error(exc: httpx.HTTPError, *, streaming: bool = False) -> OpenAIError:
    """An httpx failure as the OpenAI error the client gets (status, code, Retry-After)."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return OpenAIError(503, "the engine is not reachable", code="engine_down", retry_after=5)
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


class StreamStats:
    """What the relay learned about one stream, without parsing it."""

    __slots__ = ("done", "events", "first_chunk_at", "tail")

    def __init__(self) -> None:
        self.events = 0
        self.tail = b""
        self.done = False
        self.first_chunk_at: float | None = None

    def completion_tokens(self, role_events: int) -> int:
        """From the usage event when the client asked for it, else one token per event."""
        m = _USAGE_RE.search(self.tail)
        if m:
            return int(m.group(1))
        return max(0, self.events - role_events - (1 if self.done else 0))


async def relay_sse(response: httpx.Response, send: Send, stats: StreamStats) -> None:
    """Send the engine's SSE bytes to the client as they arrive. Raises ``httpx.HTTPError``."""
    prev = last = b""
    events = 0
    try:
        async for chunk in response.aiter_raw():
            if stats.first_chunk_at is None:
                stats.first_chunk_at = time.perf_counter()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            events += chunk.count(b"\n\n")
            prev, last = last, chunk
    finally:
        stats.events = events
        stats.tail = prev[-512:] + last
        stats.done = _DONE in stats.tail[-64:]
