"""``RespClient``: the shared state's connection to Redis: RESP2, pipelined, one connection.

Why not redis-py here: every admitted request makes two script calls and one pipeline, and
through redis-py's asyncio client (on uvloop, as the gateway runs) one ``EVALSHA`` cost 88 us of
CPU and a pipeline of four commands 111 us on the 2-core dev VM; the same command packed and
parsed here costs ~30 us (``python -m bench gateway`` with ``GATEWAY_STATE_URL``: README,
Performance). What this client needs is small: pack a command, parse five reply types, match
replies to callers in order. Concurrent callers share the connection: each command's reply
resolves its own future, in the order they were written (Redis answers in order), so a request
never waits for a connection of a pool.

- URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS, verified against the
  system's trust store, or ``?ssl_ca_certs=/path/ca.pem`` alone: a managed Redis's own server
  CA), ``unix:///path/to/socket[?db=N]`` (``url.py`` checks them first).
- Errors: an error reply is a ``ReplyError`` (in place, in a pipeline's answers); a lost or
  refused connection an ``OSError``; a call slower than ``timeout_s`` a ``TimeoutError``. A
  broken connection fails every command waiting on it, and the next call connects again.
- Replies: bulk and simple strings as ``str`` (UTF-8), integers as ``int``, arrays as lists,
  nil as ``None``; HGETALL and XREAD therefore answer flat lists (their readers pair them).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.state.url import CA_PARAM


class ReplyError(Exception):
    """An error reply from the server (``-ERR ...``, ``-NOSCRIPT ...``, ``-WRONGPASS ...``)."""

    @property
    def noscript(self) -> bool:
        return str(self).startswith("NOSCRIPT")


class _Incomplete(Exception):
    pass


def pack(args: Sequence[object]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply from ``buf`` at ``pos``: (value, the position after it); ``_Incomplete`` if
    the buffer does not hold all of it yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + n]).decode(errors="replace"), pos + n + 2
    if kind == b":":
        return int(line), pos
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b"+":
        return line.decode(), pos
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), pos
    raise ValueError(f"not a RESP2 reply: {bytes(buf[pos - len(line) - 3 : pos])!r}")


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.buf = bytearray()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while pos < len(self.buf):
                value, pos = parse(self.buf, pos)
                fut = self.pending.popleft() if self.pending else None
                if fut is not None and not fut.done():  # a caller that timed out: skipped
                    fut.set_result(value)
        except _Incomplete:
            pass
        except (ValueError, IndexError) as exc:  # out of sync: nothing after this is trusted
            self._fail(OSError(f"bad reply from the state store: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        del self.buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the state store closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(OSError(str(exc) or type(exc).__name__))

    def send(self, commands: Sequence[Sequence[object]]) -> list[asyncio.Future[Any]]:
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the state store's connection is closed")
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in commands]
        self.pending.extend(futs)
        self.transport.write(b"".join(pack(c) for c in commands))
        return futs


class RespClient:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.unix = parts.path if parts.scheme == "unix" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.tls = parts.scheme == "rediss"
        self.ca = query.get(CA_PARAM, [None])[0]
        db = query.get("db", [""])[0] if self.unix else parts.path.lstrip("/")
        self.db = int(db) if db else 0
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def execute(self, *args: object) -> Any:
        """One command's reply; an error reply is raised."""
        (reply,) = await self.pipeline([args])
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[object]]) -> list[Any]:
        """The replies to ``commands`` sent together (one round trip); error replies in place."""
        async with asyncio.timeout(self.timeout_s):
            conn = await self._connection()
            return list(await asyncio.gather(*conn.send(commands)))

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.lost is None:
            return conn
        if self._connecting is None:  # one connect for every caller waiting on it
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self.unix is not None:
            _, conn = await loop.create_unix_connection(_Connection, self.unix)
        else:
            tls = ssl.create_default_context(cafile=self.ca) if self.tls else None
            _, conn = await loop.create_connection(
                _Connection, self.host, self.port, ssl=tls,
                server_hostname=self.host if tls else None,
            )  # fmt: skip
        hello: list[Sequence[object]] = []
        if self.password is not None:
            user = [self.username] if self.username else []
            hello.append(("AUTH", *user, self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        if hello:
            for reply in await asyncio.gather(*conn.send(hello)):
                if isinstance(reply, ReplyError):
                    assert conn.transport is not None
                    conn.transport.close()
                    raise reply
        self._conn = conn
        return conn

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
