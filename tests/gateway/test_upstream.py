"""The sharded upstream transport: least-busy routing, and every exit path frees its shard.

A leaked "busy" count would slowly steer all traffic onto the other shards until one of them
runs out of connections, so release is checked on close, on failure and on cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from gateway.upstream import SHARD_CONNECTIONS, ShardedTransport, make_client

pytestmark = pytest.mark.anyio


class Body(httpx.AsyncByteStream):
    """A streamed body (``httpx.Response(content=...)`` would be read eagerly)."""

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield b"data: x\n\n"


class Shard(httpx.AsyncBaseTransport):
    """A fake pool: answers at once, or waits for ``gate``, or fails, as the test says."""

    def __init__(self) -> None:
        self.handled = 0
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.handled += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, stream=Body())


def sharded(n: int) -> tuple[ShardedTransport, list[Shard]]:
    shards = [Shard() for _ in range(n)]
    return ShardedTransport(shards), shards


async def test_routes_each_request_to_the_least_busy_shard() -> None:
    transport, shards = sharded(3)
    async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
        open_ = [await client.send(client.build_request("GET", "/"), stream=True) for _ in range(5)]
        assert transport.busy == [2, 2, 1]
        await open_[0].aclose()  # shard 0 frees a request: it is now (with 2) the least busy
        assert transport.busy == [1, 2, 1]
        extra = await client.send(client.build_request("GET", "/"), stream=True)
        assert transport.busy == [2, 2, 1]  # ties go to the first shard
        for r in [*open_[1:], extra]:
            await r.aclose()
    assert transport.busy == [0, 0, 0]
    assert sum(s.handled for s in shards) == 6


async def test_close_releases_once_even_if_closed_twice() -> None:
    transport, _ = sharded(2)
    async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
        r = await client.send(client.build_request("GET", "/"), stream=True)
        assert sum(transport.busy) == 1
        assert [c async for c in r.aiter_raw()] == [b"data: x\n\n"]
        await r.aclose()
        await r.aclose()
        assert transport.busy == [0, 0]
        r = await client.get("/")  # non-streaming: httpx reads and closes it itself
        assert r.content == b"data: x\n\n" and transport.busy == [0, 0]


async def test_failure_before_a_response_releases() -> None:
    transport, shards = sharded(2)
    shards[0].fail = True
    async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")
    assert transport.busy == [0, 0]


async def test_cancellation_while_waiting_for_the_upstream_releases() -> None:
    transport, shards = sharded(2)
    shards[0].gate = asyncio.Event()  # never set: the request hangs until cancelled
    async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
        task = asyncio.create_task(client.get("/"))
        while not shards[0].handled:
            await asyncio.sleep(0)
        assert transport.busy == [1, 0]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert transport.busy == [0, 0]


def test_pool_size_is_split_into_small_shards() -> None:
    transport = ShardedTransport.for_connections(4 * SHARD_CONNECTIONS + 1)
    assert len(transport.shards) == 5
    assert len(ShardedTransport.for_connections(1).shards) == 1
    with pytest.raises(ValueError):
        ShardedTransport([])


async def test_real_server_round_trip_through_shards() -> None:
    """Real sockets: concurrent streams spread over shards and all counts return to zero."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # keep-alive: one GET after another on the same connection
                await reader.readuntil(b"\r\n\r\n")
                started.set()
                await release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}", 3 * SHARD_CONNECTIONS, 5, 5)
    transport = client._transport
    assert isinstance(transport, ShardedTransport) and len(transport.shards) == 3
    try:
        tasks = [asyncio.create_task(client.get("/")) for _ in range(6)]
        await started.wait()
        while sum(transport.busy) < 6:
            await asyncio.sleep(0.01)
        assert transport.busy == [2, 2, 2]
        release.set()
        assert [(await t).text for t in tasks] == ["ok"] * 6
        assert transport.busy == [0, 0, 0]
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
