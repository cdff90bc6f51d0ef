"""``/v1/chat/completions`` and ``/v1/completions``, and the engine passthroughs: HTTP only.

A completion route reads who is calling and the body, hands a ``Call`` to the completion
service with an ``AsgiSink`` to answer into, and counts the outcome; the service does the work
(``gateway/service.py``). The sink is where HTTP lives: SSE headers sent at most once, comments
while queued, the engine's bytes as ASGI body messages, and an error rendered as a status with
OpenAI error JSON before the first byte, as a terminal SSE event (then ``data: [DONE]``) after.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from gateway.asgi import ClientGone, DisconnectGuard, read_body, request_id, send_bytes, send_error
from gateway.auth import Access
from gateway.errors import OpenAIError
from gateway.metrics import CLIENT_CLOSED, GatewayMetrics, rejection_reason
from gateway.service import Call, CompletionService
from gateway.types import Headers, Receive, Scope, Send
from gateway.upstream import upstream_error
from gateway.validation import Kind

_KEEPALIVE = {"type": "http.response.body", "body": b": queued\n\n", "more_body": True}
_END = {"type": "http.response.body", "body": b"", "more_body": False}
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class AsgiSink:
    """The service's ``Sink`` over one ASGI response (per request, never shared)."""

    __slots__ = ("_send", "guard", "headers", "started")

    def __init__(self, send: Send, request_id: bytes) -> None:
        self._send = send
        self.headers: Headers = [(b"x-request-id", request_id)]
        self.guard: DisconnectGuard | None = None
        self.started = False

    def add_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    async def open(self) -> None:
        if self.started:
            return
        self.started = True
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": _SSE_HEADERS + self.headers,
        }
        await self._send(start)

    async def keepalive(self) -> None:
        await self.open()
        await self._send(_KEEPALIVE)

    async def chunk(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        self._finish()
        await self._send(_END)

    async def reply(self, status: int, body: bytes, content_type: bytes) -> None:
        self._finish()
        await send_bytes(self._send, status, body, content_type, self.headers)

    async def fail(self, err: OpenAIError) -> None:
        self._finish()
        if not self.started:
            await send_error(self._send, err, self.headers)
            return
        await self._send(
            {"type": "http.response.body", "body": err.sse_event(), "more_body": False}
        )

    def _finish(self) -> None:
        """The response is about to complete: a later disconnect is just its end."""
        if self.guard is not None:
            self.guard.finish()


class CompletionsRoute:
    """One of the two generation routes (``kind`` chat or completions)."""

    def __init__(
        self,
        kind: Kind,
        path: str,
        service: CompletionService,
        access: Access,
        metrics: GatewayMetrics,
        body_limit: int,
    ) -> None:
        self.call_args = (kind, path)
        self.kind = kind
        self.service = service
        self.access = access
        self.metrics = metrics
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = self.metrics
        t0 = time.perf_counter()
        sink = AsgiSink(send, request_id(scope))
        call: Call | None = None
        status = 500
        try:
            caller = self.access.caller(scope["headers"])
            body = await read_body(scope, receive, self.body_limit)
            call = Call(*self.call_args, body, caller, sink.headers[0][1], t0)
            sink.guard = DisconnectGuard(receive)
            status = await self.service.run(call, sink)
        except OpenAIError as err:
            m.reject(rejection_reason(err))
            status = err.status
            await sink.fail(err)
        except ClientGone:
            status = CLIENT_CLOSED
            m.disconnects.labels("request").inc()
        except asyncio.CancelledError:
            if sink.guard is None or not sink.guard.absorb():
                raise
            status = CLIENT_CLOSED
            if call is not None and call.phase is not None:
                m.disconnects.labels(call.phase).inc()
        finally:
            if sink.guard is not None:
                sink.guard.close()
            m.request(self.kind, status)
            m.latency.labels(self.kind).observe(time.perf_counter() - t0)


class Passthrough:
    """Authorised passthrough for engine utility routes (``/v1/models``, ``/tokenize`` ...)."""

    def __init__(
        self,
        method: str,
        path: str,
        route: str,
        client: httpx.AsyncClient,
        access: Access,
        metrics: GatewayMetrics,
        body_limit: int,
        timeout_s: float,
    ) -> None:
        self.method = method
        self.path = path
        self.route = route
        self.client = client
        self.access = access
        self.metrics = metrics
        self.body_limit = body_limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(scope)
        headers = [(b"x-request-id", rid)]
        try:
            self.access.caller(scope["headers"])
            body = b""
            if self.method == "POST":
                body = await read_body(scope, receive, self.body_limit)
            try:
                r = await self.client.request(
                    self.method, self.path, content=body or None,
                    headers={"content-type": "application/json", "x-request-id": rid.decode()},
                    timeout=self.timeout_s,
                )  # fmt: skip
            except httpx.HTTPError as exc:
                raise upstream_error(exc) from None
        except OpenAIError as err:
            self.metrics.reject(rejection_reason(err))
            self.metrics.request(self.route, err.status)
            await send_error(send, err, headers)
            return
        except ClientGone:
            return
        ctype = r.headers.get("content-type", "application/json").encode()
        self.metrics.request(self.route, r.status_code)
        await send_bytes(send, r.status_code, r.content, ctype, headers)
