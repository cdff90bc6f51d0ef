"""The shared state's RESP2 client (``gateway.state.resp``): the parser on split and odd
replies, and against a real redis-server: concurrent callers on one connection each get their
own reply, a pipeline answers errors in place, a caller that timed out does not shift the
replies of the next, a password is required and checked, and a server that went away and came
back is connected to again."""

from __future__ import annotations

import asyncio

import pytest

from gateway.state.resp import ReplyError, RespClient, _Incomplete, pack, parse
from tests.support.redis import RedisServer


def test_pack_and_parse_every_reply_type_even_split_anywhere() -> None:
    assert (
        pack(["SET", "k", 1.5, b"\x00"])
        == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n$1\r\n\x00\r\n"
    )
    wire = b"*5\r\n:42\r\n$6\r\nh\xc3\xa9llo\r\n$-1\r\n+OK\r\n*2\r\n*0\r\n-ERR no\r\n"
    value, end = parse(wire, 0)
    assert end == len(wire)
    assert value[:4] == [42, "héllo", None, "OK"]
    assert value[4][0] == [] and isinstance(value[4][1], ReplyError)
    assert str(value[4][1]) == "ERR no" and not value[4][1].noscript
    assert ReplyError("NOSCRIPT No matching script").noscript
    for cut in range(len(wire)):  # any prefix is incomplete, never a wrong value
        with pytest.raises(_Incomplete):
            parse(wire[:cut], 0)
    with pytest.raises(ValueError):
        parse(b"?what\r\n", 0)


@pytest.mark.redis
def test_one_connection_many_callers_errors_in_place_and_timeouts_keep_order(
    redis_server: RedisServer,
) -> None:
    async def go() -> None:
        c = RespClient(redis_server.url, timeout_s=5.0)
        try:
            await c.execute("FLUSHDB")
            got = await asyncio.gather(*(c.execute("INCR", "n") for _ in range(50)))
            assert sorted(got) == list(range(1, 51))  # each caller its own reply
            replies = await c.pipeline([("SET", "a", "x"), ("INCR", "a"), ("GET", "a")])
            assert replies[0] == "OK" and replies[2] == "x"
            assert isinstance(replies[1], ReplyError)
            with pytest.raises(ReplyError):
                await c.execute("NOSUCHCOMMAND")
            # A caller that gives up before its reply: the next caller still gets its own.
            slow = RespClient(redis_server.url, timeout_s=0.05)
            with pytest.raises(TimeoutError):
                await slow.execute("BLPOP", "nothing", 1)  # the server answers after 1 s
            slow.timeout_s = 5.0  # BLPOP's nil comes first, to the caller that left: skipped
            assert await slow.execute("ECHO", "after") == "after"
            await slow.aclose()
        finally:
            await c.aclose()

    asyncio.run(go())


@pytest.mark.redis
def test_a_password_is_required_checked_and_a_restarted_server_reconnected(
    redis_server: RedisServer,
) -> None:
    async def go() -> None:
        admin = RespClient(redis_server.url, timeout_s=5.0)
        await admin.execute("CONFIG", "SET", "requirepass", "s3cret")
        try:
            host_port = redis_server.url.split("//", 1)[1].split("/", 1)[0]
            wrong = RespClient(f"redis://:nope@{host_port}/0", timeout_s=5.0)
            with pytest.raises(ReplyError, match=r"WRONGPASS|invalid"):
                await wrong.execute("PING")
            none = RespClient(f"redis://{host_port}/0", timeout_s=5.0)
            with pytest.raises(ReplyError, match="NOAUTH"):
                await none.execute("PING")
            await none.aclose()
            right = RespClient(f"redis://:s3cret@{host_port}/3", timeout_s=5.0)
            await right.execute("SET", "in-db-3", "1")
            assert await right.execute("GET", "in-db-3") == "1"
            await right.aclose()
        finally:
            await admin.execute("CONFIG", "SET", "requirepass", "")
            await admin.aclose()
        c = RespClient(redis_server.url, timeout_s=5.0)
        try:
            assert await c.execute("PING") == "PONG"
            redis_server.stop()
            with pytest.raises(OSError):
                await c.execute("PING")
            redis_server.start()
            assert await c.execute("PING") == "PONG"  # connected again
        finally:
            await c.aclose()

    asyncio.run(go())
