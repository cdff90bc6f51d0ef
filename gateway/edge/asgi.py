"""Minimal ASGI plumbing: body reading with a size cap, JSON answers, disconnect detection.

The gateway talks raw ASGI rather than through a framework's Request/Response objects because
it sits on every streamed token (issue 7): no middleware stack wrapping ``send`` per chunk, no
response object per request, headers built once as byte pairs.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import zlib
from typing import Any

from gateway.edge.types import Headers, Receive, Scope, Send
from gateway.errors import OpenAIError

JSON = b"application/json"
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


_TRACE = (b"traceparent", b"tracestate")


def trace_headers(scope: Scope) -> bytes:
    """W3C trace context as sent (``traceparent``, ``tracestate``), as header lines to pass on
    to the engine, which can then join the caller's trace (vLLM's OpenTelemetry spans)."""
    out = b""
    for k, v in scope["headers"]:
        if k in _TRACE and len(v) <= 512:
            out += k + b": " + v + b"\r\n"
    return out


def request_id(scope: Scope) -> bytes:
    """The caller's ``X-Request-Id`` if it is sane, else a fresh one."""
    rid = header(scope, b"x-request-id")
    if rid is not None and _REQUEST_ID_RE.match(rid):
        return rid
    return secrets.token_hex(12).encode()


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing (413) as soon as it is known to exceed ``limit``.

    The one place the body size limit (``GATEWAY_MAX_BODY_BYTES``) is enforced: a declared
    ``Content-Length`` over it is refused before a byte is read, a chunked body as soon as the
    running total passes it.
    """
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise OpenAIError(
            413, f"request body is {int(length)} bytes; the limit is {limit}",
            code="request_too_large",
        )  # fmt: skip
    encoding = header(scope, b"content-encoding")
    inflate = None
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        inflate = _decompressor(encoding)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk and inflate is not None:
            # Bounded output: at most one byte past the limit, whatever the ratio (no zip bomb).
            try:
                chunk = inflate.decompress(chunk, limit + 1 - size)
            except zlib.error as exc:
                raise OpenAIError(400, f"the compressed request body is corrupt: {exc}",
                                  code="invalid_encoding") from None  # fmt: skip
            if inflate.unconsumed_tail:
                chunk += b"x"  # more output is waiting: over the limit by definition
        if chunk:
            size += len(chunk)
            if size > limit:
                raise OpenAIError(
                    413, f"request body exceeds the limit of {limit} bytes"
                    + (" once decompressed" if inflate is not None else ""),
                    code="request_too_large",
                )  # fmt: skip
            chunks.append(chunk)
        if not message.get("more_body", False):
            if inflate is not None and not inflate.eof:
                raise OpenAIError(400, "the compressed request body is truncated",
                                  code="invalid_encoding")  # fmt: skip
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _decompressor(encoding: bytes) -> Any:
    """gzip or deflate (zlib or raw) request bodies; anything else is a 415."""
    name = encoding.strip().lower()
    if name in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == b"deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib header auto-detected
    raise OpenAIError(
        415, f"Content-Encoding {name.decode('latin-1')!r} is not supported (gzip, deflate)",
        code="unsupported_encoding",
    )  # fmt: skip


class ClientGone(Exception):
    """The client disconnected before the answer was complete."""


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: Headers | None = None,
) -> None:
    h = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        h.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, data: Any, headers: Headers | None = None) -> None:
    await send_bytes(send, status, json.dumps(data).encode(), JSON, headers)


async def send_error(send: Send, err: OpenAIError, headers: Headers | None = None) -> None:
    h = err.header_list()
    if headers:
        h.extend(headers)
    await send_bytes(send, err.status, err.body(), JSON, h)


class DisconnectGuard:
    """Cancels the request's task when the client disconnects (while queued or streaming).

    uvicorn's ``send`` silently drops data for a gone client, so without this a proxy would
    keep an engine slot generating for nobody. Once the body is read, ``receive()`` only
    returns on disconnect (or after the response completed, which ``finish()`` marks first).
    """

    __slots__ = ("_task", "_watch", "disconnected", "finished")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.disconnected = False
        self.finished = False
        self._watch = asyncio.get_running_loop().create_task(self._run(receive))

    async def _run(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self.disconnected = True
                    self._task.cancel()
                return

    def finish(self) -> None:
        """The response is about to complete: a later "disconnect" is just the end of it."""
        self.finished = True

    def close(self) -> None:
        self.finished = True
        self._watch.cancel()

    def absorb(self) -> bool:
        """In an ``except CancelledError``: True (and un-cancel) if the cause was a disconnect."""
        if self.disconnected:
            self._task.uncancel()
            return True
        return False
