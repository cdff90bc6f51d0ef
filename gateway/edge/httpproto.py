"""uvicorn's httptools HTTP/1.1 protocol, with the limits a public door needs.

uvicorn (0.54) has no limit on the size of a request head, no timeout for reading a head or a
body, and no timer at all on a new connection until its first response: a client that opens
connections and trickles a byte every few seconds holds sockets and memory for as long as it
likes (slowloris). And an ``Upgrade`` offer it does not take (``h2c``, sent by ``curl --http2``
and some Java clients) loses the request body: llhttp stops at the end of the head and reports
the body as upgrade data, which uvicorn drops (uvicorn issue #2722).

This subclass adds, per connection:

- head size: more than ``max_head_bytes`` without the head being complete -> 431, closed;
- head time: a head (the first request's, or a kept-alive connection's next one once its first
  byte arrived) not complete within ``head_timeout_s`` -> 408, closed; an idle new connection
  too (nginx's ``client_header_timeout`` and ``client_body_timeout`` are the same idea);
- body time: no body byte for ``body_timeout_s`` while a body is due -> 408, closed (the
  request's task sees a disconnect);
- an unused ``Upgrade`` offer: the upgrade data is the body (by ``Content-Length``), and the
  connection closes after the answer (the parser is past this request).

Each answer is OpenAI error JSON. The timers are ``loop.call_later`` handles armed and cancelled
at the parser's callbacks: no per-chunk cost on the response path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import OpenAIError

_LATE_S = 0.25  # a timer this late (or more) ran on a starved loop


@dataclass(frozen=True)
class Limits:
    """``GATEWAY_MAX_HEAD_BYTES``, ``GATEWAY_HEAD_TIMEOUT_S``, ``GATEWAY_BODY_TIMEOUT_S``."""

    max_head_bytes: int = 32 * 1024
    head_timeout_s: float = 30.0
    body_timeout_s: float = 60.0


class GatewayHttpProtocol(HttpToolsProtocol):
    limits = Limits()

    @classmethod
    def configured(cls, limits: Limits) -> type[GatewayHttpProtocol]:
        """The class uvicorn instantiates per connection (``uvicorn.run(http=...)``)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_bytes = 0
        self._in_head = True  # a new connection waits for its first head
        self._in_body = False
        self._timer: asyncio.TimerHandle | None = None
        self._upgrade_body_left = 0

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.head_timeout_s, 408, "the request head was not received in time")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._upgrade_body_left:
            self._take_upgrade_body(data)
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._refuse(400, "invalid HTTP request")
            return
        except httptools.HttpParserUpgrade as exc:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._ignore_upgrade(data[exc.args[0] :])
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(431, f"the request head exceeds {self.limits.max_head_bytes} bytes")
        elif self._in_body:
            self._arm(self.limits.body_timeout_s, 408, "the request body stalled")

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the first byte of a kept-alive connection's next request
            self._in_head = True
            self._head_bytes = 0
            self._arm(self.limits.head_timeout_s, 408, "the request head was not received in time")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._arm(self.limits.body_timeout_s, 408, "the request body stalled")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    # -- an Upgrade offer nobody takes -------------------------------------------------------------

    def _ignore_upgrade(self, rest: bytes) -> None:
        """The head is parsed and the request's task started; ``rest`` starts its body."""
        self.cycle.keep_alive = False  # the parser cannot read a next request on this connection
        length = next((v for k, v in self.headers if k == b"content-length"), b"0")
        self._upgrade_body_left = int(length) if length.isdigit() else 0
        if self._upgrade_body_left:
            self.cycle.more_body = True
            self._in_body = True
            self._take_upgrade_body(rest)

    def _take_upgrade_body(self, data: bytes) -> None:
        piece = data[: self._upgrade_body_left]
        self._upgrade_body_left -= len(piece)
        self.cycle.body += piece
        if not self._upgrade_body_left:
            self.cycle.more_body = False
            self._in_body = False
            self._disarm()
        else:
            self._arm(self.limits.body_timeout_s, 408, "the request body stalled")
        self.cycle.message_event.set()

    # -- timers and refusals -----------------------------------------------------------------------

    def _arm(self, delay: float, status: int, message: str) -> None:
        self._disarm()
        due = self.loop.time() + delay
        self._timer = self.loop.call_later(delay, self._expire, due, status, message)

    def _expire(self, due: float, status: int, message: str) -> None:
        """A timer that fires late means the loop was starved, and the client's bytes may be
        waiting unread (uvloop runs due timers before it polls sockets): give reading one more
        turn before refusing, so a busy gateway does not blame its clients."""
        if self.loop.time() - due > _LATE_S:
            self._timer = self.loop.call_later(_LATE_S, self._refuse, status, message)
            return
        self._refuse(status, message)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, message: str) -> None:
        """Answer outside the app (no request task has begun answering) and close."""
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        code = {408: "request_timeout", 431: "request_head_too_large"}.get(status, "bad_request")
        body = OpenAIError(status, message, code=code).body()
        reason = {400: b"Bad Request", 408: b"Request Timeout",
                  431: b"Request Header Fields Too Large"}[status]  # fmt: skip
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, reason, len(body))
        )
        self.transport.write(head + body)
        self.transport.close()
