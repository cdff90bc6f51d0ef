"""The shared state's RESP2 client (``gateway.state.resp``): the parser on split and odd
replies, and against a real redis-server: concurrent callers on one connection each get their
own reply, a pipeline answers errors in place, a caller that timed out does not shift the
replies of the next, a password is required and checked, a server that went away and came
back is connected to again, and TLS verifies the server (the URL's CA, or the system's)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from gateway.state.resp import ReplyError, RespClient, _Incomplete, pack, parse
from gateway.state.url import StateUrlError, check
from tests.support.process import free_port
from tests.support.redis import RedisServer
from tests.support.tls import make_certs


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


@pytest.mark.redis
def test_tls_verifies_the_server_against_the_urls_ca_or_the_systems(tmp_path: Path) -> None:
    """A redis-server with TLS on (Debian's build has it) and a certificate from a private CA,
    for ``localhost``, like a managed Redis with its own server CA: ``rediss://`` with
    ``ssl_ca_certs`` naming that CA connects; without it (the system's trust store) the server
    is refused, as it is when the name connected to is not the certificate's. The state URL's
    check refuses the parameter without TLS and a CA file it cannot read, in one line."""
    certs = make_certs(tmp_path)
    tls_port = free_port()
    server = RedisServer(tmp_path, args=(
        "--tls-port", str(tls_port), "--tls-cert-file", str(certs.cert),
        "--tls-key-file", str(certs.key), "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "no",
    )).start()  # fmt: skip

    async def go() -> None:
        url = f"rediss://localhost:{tls_port}/2?ssl_ca_certs={certs.ca}"
        assert check(url) == url
        trusted = RespClient(url, timeout_s=5.0)
        try:
            await trusted.execute("SET", "over-tls", "1")
            assert await trusted.execute("GET", "over-tls") == "1"
        finally:
            await trusted.aclose()
        plain = RespClient(server.url_for(2), timeout_s=5.0)  # the same server, db 2
        assert await plain.execute("GET", "over-tls") == "1"
        await plain.aclose()
        for refused in (f"rediss://localhost:{tls_port}/2",  # the system's CAs: not ours
                        f"rediss://127.0.0.1:{tls_port}/2?ssl_ca_certs={certs.ca}"):  # fmt: skip
            c = RespClient(refused, timeout_s=5.0)
            with pytest.raises(ssl.SSLCertVerificationError):
                await c.execute("PING")
            await c.aclose()

    try:
        asyncio.run(go())
    finally:
        server.stop()
    with pytest.raises(StateUrlError, match="needs rediss://"):
        check(f"redis://localhost:{tls_port}/0?ssl_ca_certs={certs.ca}")
    with pytest.raises(StateUrlError, match="not a readable file"):
        check(f"rediss://:pw@localhost:{tls_port}/0?ssl_ca_certs={tmp_path}/missing.pem")
