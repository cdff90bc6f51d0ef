"""The token path's HTTP/1.1 client: an asyncio protocol, httptools, a keep-alive pool.

Why not httpx here (it stays for /tokenize and the passthrough routes):
on the 2-core VM this project is measured on, httpx + httpcore + h11 + anyio cost ~1.4 ms of
CPU for one bare request and tens of microseconds per streamed chunk (per-read cancel scopes, h11's
pure-Python parser, the pool's per-event scan), which is most of what the gateway adds at 256
streams (issue 7). Here a request is one ``transport.write``, the response is parsed by
httptools (C, the parser uvicorn already uses for the client side), and body pieces are handed
to the relay straight from ``data_received``: no task, no cancel scope, no per-chunk timer
unless the relay has to wait.

Semantics kept from the httpx client it replaces:
- errors are raised as httpx's exception types (``ConnectError``, ``ConnectTimeout``,
  ``ReadTimeout``, ``RemoteProtocolError``, ``ReadError``), so ``upstream.upstream_error`` maps
  both clients the same way;
- the read timeout applies to each wait for data (silence), never to the whole response;
- closing a response before its end closes the connection, which makes vLLM abort the request.

Keep-alive: idle connections are reused LIFO for ``keepalive_s`` (4 s: below the 5 s after which
vLLM's server closes an idle one, ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``, so the engine does not close
one under our feet in the common case); a reused connection that the engine closed before answering anything is retried
once on a new one: the engine did not see that request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools
import httpx

# Stop reading the socket while this much body is buffered (a slow client): TCP backpressure
# then slows the engine's writes instead of the gateway's memory growing.
HIGH_WATER = 256 * 1024


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the engine; parses responses as they arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False  # any byte of this response yet
        self.error: Exception | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response from the engine: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            why = f": {exc}" if exc else ""
            self._fail(httpx.RemoteProtocolError(f"the engine closed the connection{why}"))

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- helpers -------------------------------------------------------------------------------

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)

    async def wait(self, timeout: float) -> None:
        """Until the next parser event, a failure, or ``timeout`` s of silence (ReadTimeout)."""
        if self.error is not None:
            raise self.error
        w = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, w, timeout)
        try:
            await w
        finally:
            timer.cancel()
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(w: asyncio.Future[None], timeout: float) -> None:
    if not w.done():
        w.set_exception(httpx.ReadTimeout(f"no data from the engine for {timeout:g} s"))


class EngineResponse:
    """A response whose body is read as it arrives; ``close()`` returns the connection."""

    __slots__ = ("_conn", "_pool", "_timeout", "headers", "status_code")

    def __init__(self, conn: _Connection, pool: EnginePool, timeout: float) -> None:
        self._conn: _Connection | None = conn
        self._pool = pool
        self._timeout = timeout
        self.status_code = conn.status
        self.headers = dict(conn.headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (de-chunked, not decoded). Whatever has piled up since the
        last read comes as one piece: fewer, larger writes to the client under load."""
        conn = self._conn
        assert conn is not None, "response already closed"
        while True:
            if conn.chunks:
                q = conn.chunks
                piece = q.popleft() if len(q) == 1 else b"".join(q)
                q.clear()
                conn.buffered = 0
                if conn.paused and conn.transport is not None:
                    conn.paused = False
                    conn.transport.resume_reading()
                yield piece
            elif conn.complete:
                return
            else:
                await conn.wait(self._timeout)

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    def close(self) -> None:
        """Back to the pool if the response was read to its end, else close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class EnginePool:
    """Keep-alive connections to one engine (``http`` or ``https`` base URL)."""

    def __init__(self, base_url: str, connect_timeout_s: float, keepalive_s: float = 4.0) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl = u.scheme == "https"
        self.prefix = u.path.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        netloc = u.netloc.rsplit("@", 1)[-1]
        self._fixed = (
            f"host: {netloc}\r\naccept-encoding: identity\r\nuser-agent: gemma4-gateway\r\n"
        ).encode()
        self.idle: list[_Connection] = []
        self.active: set[_Connection] = set()

    async def request(
        self, method: str, path: str, body: bytes, headers: bytes, read_timeout_s: float
    ) -> EngineResponse:
        """Send one request and wait for its response head. ``headers`` is extra raw header
        lines (``b"name: value\\r\\n"`` each); content-length is added here."""
        head = (
            f"{method} {self.prefix}{path} HTTP/1.1\r\ncontent-length: {len(body)}\r\n".encode()
            + self._fixed
            + headers
            + b"\r\n"
        )
        conn, reused = self._checkout(), True
        if conn is None:
            conn, reused = await self._connect(), False
        try:
            return await self._exchange(conn, head + body, read_timeout_s)
        except httpx.RemoteProtocolError:
            if not reused or conn.received:
                raise
        conn = await self._connect()  # a reused connection the engine had just closed: retry
        return await self._exchange(conn, head + body, read_timeout_s)

    async def call(self, method: str, path: str, timeout: float) -> tuple[int, bytes]:
        """One small whole exchange (the monitor's /metrics and /health polls): status, body."""
        r = await self.request(method, path, b"", b"", timeout)
        try:
            return r.status_code, await r.aread()
        finally:
            r.close()

    async def _exchange(self, conn: _Connection, data: bytes, timeout: float) -> EngineResponse:
        self.active.add(conn)
        try:
            assert conn.transport is not None
            conn.transport.write(data)
            while not conn.head_done:
                await conn.wait(timeout)
        except BaseException:
            self.active.discard(conn)
            conn.close()
            raise
        return EngineResponse(conn, self, timeout)

    def _checkout(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns the connection's outcome
            # and drops a cancel that lands in the same loop turn (a refused connect at shutdown
            # after a busy spell), and the cancelled monitor then polled on forever
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port, ssl=self.ssl or None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {self.host}:{self.port} within {self.connect_timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(f"{self.host}:{self.port}: {exc}") from None
        return conn

    def release(self, conn: _Connection) -> None:
        self.active.discard(conn)
        if conn.closed or not conn.complete or not conn.keep_alive or conn.chunks:
            conn.close()
            return
        conn._reset()
        conn.idle_since = asyncio.get_running_loop().time()
        self.idle.append(conn)

    async def aclose(self) -> None:
        for conn in [*self.idle, *self.active]:
            conn.close()
        self.idle.clear()
        self.active.clear()
