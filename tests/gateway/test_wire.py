"""The token path's HTTP/1.1 client against real loopback sockets (scripted asyncio servers).

Each server here speaks raw HTTP so a test can choose exactly what the "engine" does: chunked
streaming, silence, closing an idle keep-alive connection, a malformed answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from gateway.upstream import wire
from gateway.upstream.wire import EnginePool

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback TCP server running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.handler(reader, writer)
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def serving(handler_factory: Callable[[Server], Handler]) -> AsyncIterator[Server]:
    srv = Server(lambda r, w: asyncio.sleep(0))
    srv.handler = handler_factory(srv)
    srv.server = await asyncio.start_server(srv._serve, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.server.close()
        # Handlers still writing or sleeping (a client that hung up) end here, not after the
        # loop is gone: a callback of theirs on a closed loop is a RuntimeError (seen on uvloop).
        for task in srv.handlers:
            task.cancel()
        await asyncio.gather(*srv.handlers, return_exceptions=True)
        await srv.server.wait_closed()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_server(events: int, gap_s: float = 0.0) -> Callable[[Server], Handler]:
    """Answers every request on a connection with ``events`` chunked SSE events (keep-alive)."""

    def factory(srv: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await srv.read_request(reader)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                for i in range(events):
                    writer.write(chunk(b"data: %d\n\n" % i))
                    await writer.drain()
                    if gap_s:
                        await asyncio.sleep(gap_s)
                writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()

        return handle

    return factory


async def read_all(pool: EnginePool, timeout: float = 5.0) -> tuple[int, bytes]:
    r = await pool.request("POST", "/v1/completions", b'{"a":1}', b"x-request-id: t1\r\n", timeout)
    try:
        return r.status_code, await r.aread()
    finally:
        r.close()


async def test_streams_a_chunked_body_and_reuses_the_connection() -> None:
    async with serving(sse_server(3, gap_s=0.01)) as srv:
        pool = EnginePool(srv.url + "/base", connect_timeout_s=5)
        try:
            for _ in range(3):
                status, body = await read_all(pool)
                assert status == 200
                assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
            assert srv.connections == 1  # keep-alive: one connection for three requests
            assert len(pool.idle) == 1 and not pool.active
            req = srv.requests[0]
            assert req.startswith(b"POST /base/v1/completions HTTP/1.1\r\n")
            assert b"content-length: 7\r\n" in req and b"x-request-id: t1\r\n" in req
            assert b"accept-encoding: identity\r\n" in req and req.endswith(b'{"a":1}')
        finally:
            await pool.aclose()


async def test_a_response_closed_early_closes_its_connection() -> None:
    """Closing mid-body is how a client disconnect reaches the engine (vLLM aborts on it)."""
    async with serving(sse_server(1000, gap_s=0.001)) as srv:
        pool = EnginePool(srv.url, connect_timeout_s=5)
        try:
            r = await pool.request("POST", "/x", b"{}", b"", 5)
            got = 0
            async for _ in r.chunks():
                got += 1
                if got == 2:
                    break
            r.close()
            assert not pool.idle and not pool.active
            await read_all(pool)
            assert srv.connections == 2  # the half-read connection was not reused
        finally:
            await pool.aclose()


async def test_silence_is_a_read_timeout_not_a_hang() -> None:
    def factory(srv: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await srv.read_request(reader)
            if srv.connections == 1:  # the second connection gets no answer at all
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                writer.write(chunk(b"data: 0\n\n"))
                await writer.drain()
            await asyncio.sleep(30)  # then nothing

        return handle

    async with serving(factory) as srv:
        pool = EnginePool(srv.url, connect_timeout_s=5)
        try:
            # The bound is what is under test (silence -> ReadTimeout); 1 s leaves a loaded
            # machine time to deliver the one chunk that does come.
            r = await pool.request("POST", "/x", b"{}", b"", 1.0)
            pieces = []
            with pytest.raises(httpx.ReadTimeout):
                async for piece in r.chunks():
                    pieces.append(piece)
            assert pieces == [b"data: 0\n\n"]
            r.close()
            with pytest.raises(httpx.ReadTimeout):  # no head at all: same timeout
                await pool.request("POST", "/x", b"{}", b"", 1.0)
        finally:
            await pool.aclose()


async def test_engine_dying_mid_stream_is_a_protocol_error() -> None:
    def factory(srv: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await srv.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(chunk(b"data: 0\n\n"))
            await writer.drain()
            writer.transport.abort()

        return handle

    async with serving(factory) as srv:
        pool = EnginePool(srv.url, connect_timeout_s=5)
        try:
            with pytest.raises(httpx.RemoteProtocolError):
                await read_all(pool)
            assert not pool.idle
        finally:
            await pool.aclose()


async def test_malformed_answer_is_a_protocol_error() -> None:
    def factory(srv: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await srv.read_request(reader)
            writer.write(b"SMTP ready\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(5)

        return handle

    async with serving(factory) as srv:
        pool = EnginePool(srv.url, connect_timeout_s=5)
        try:
            with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
                await read_all(pool)
        finally:
            await pool.aclose()


async def test_nobody_listening_is_a_connect_error() -> None:
    async with serving(sse_server(1)) as srv:
        url = srv.url
    pool = EnginePool(url, connect_timeout_s=5)  # the server above is gone: port closed
    with pytest.raises(httpx.ConnectError):
        await read_all(pool)


async def test_a_kept_alive_connection_the_engine_closed_is_retried_once() -> None:
    """The engine closes an idle connection just as it is reused: a fresh one, no error."""

    def factory(srv: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await srv.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            if srv.connections == 1:  # first connection: read the next request, answer nothing
                await reader.readuntil(b"\r\n\r\n")

        return handle

    async with serving(factory) as srv:
        pool = EnginePool(srv.url, connect_timeout_s=5)
        try:
            assert await read_all(pool) == (200, b"ok")
            assert len(pool.idle) == 1
            assert await read_all(pool) == (200, b"ok")
            assert srv.connections == 2
        finally:
            await pool.aclose()


async def test_idle_connections_expire_before_the_engine_closes_them() -> None:
    async with serving(sse_server(0)) as srv:
        pool = EnginePool(srv.url, connect_timeout_s=5, keepalive_s=0.05)
        try:
            await read_all(pool)
            await asyncio.sleep(0.1)
            await read_all(pool)
            assert srv.connections == 2
        finally:
            await pool.aclose()


async def test_a_slow_reader_pauses_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backpressure: past the high-water mark the pool stops reading; draining resumes it."""
    monkeypatch.setattr(wire, "HIGH_WATER", 1024)

    def factory(srv: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await srv.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(64):
                writer.write(chunk(b"x" * 512))
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        return handle

    async with serving(factory) as srv:
        pool = EnginePool(srv.url, connect_timeout_s=5)
        try:
            r = await pool.request("POST", "/x", b"{}", b"", 5)
            conn = next(iter(pool.active))
            async with asyncio.timeout(60):  # bounded: a pool that never pauses fails here
                while not conn.paused:  # nobody reads: the buffer fills and reading stops
                    await asyncio.sleep(0.01)
            assert conn.buffered <= 1024 + 64 * 1024  # at most one socket read past the mark
            assert len(await r.aread()) == 64 * 512
            r.close()
            assert len(pool.idle) == 1
        finally:
            await pool.aclose()


def test_only_http_urls() -> None:
    with pytest.raises(ValueError):
        EnginePool("unix:///tmp/x", connect_timeout_s=1)


@pytest.fixture(
    params=[("asyncio", {}), ("asyncio", {"use_uvloop": True})], ids=["asyncio", "uvloop"]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict]:
    """Both loops: the gateway runs on uvloop (whose transports are not asyncio's classes)."""
    return request.param
