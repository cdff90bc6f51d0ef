"""The four generation routes (chat, completions, responses, messages): HTTP only, raw ASGI.

A completion route reads who is calling and the body, hands a ``Call`` to the completion
service with an ``AsgiSink`` to answer into, and counts the outcome; the service does the work
(``gateway/service.py``). The sink is where HTTP lives: SSE headers sent at most once, comments
while queued, the engine's bytes as ASGI body messages, and an error rendered as a status with
OpenAI error JSON before the first byte, as a terminal SSE event (then ``data: [DONE]``) after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.apis import Api
from gateway.call import Call
from gateway.edge.accesslog import AccessLog
from gateway.edge.asgi import (
    ClientGone,
    DisconnectGuard,
    read_body,
    request_id,
    send_bytes,
    send_error,
    trace_headers,
)
from gateway.edge.types import Headers, Receive, Scope, Send
from gateway.errors import OpenAIError, internal_error
from gateway.metrics import CLIENT_CLOSED, GatewayMetrics, rejection_reason
from gateway.service import CompletionService
from gateway.tenancy.auth import Access

log = logging.getLogger("gateway")
_KEEPALIVE = {"type": "http.response.body", "body": b": queued\n\n", "more_body": True}
_END = {"type": "http.response.body", "body": b"", "more_body": False}
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class AsgiSink:
    """The service's ``Sink`` over one ASGI response (per request, never shared)."""

    __slots__ = ("_error_event", "_send", "done", "guard", "headers", "started")

    def __init__(
        self, send: Send, request_id: bytes, error_event: Callable[[OpenAIError], bytes]
    ) -> None:
        self._send = send
        self._error_event = error_event  # a terminal error after the stream started
        self.headers: Headers = [(b"x-request-id", request_id)]
        self.guard: DisconnectGuard | None = None
        self.started = False
        self.done = False

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
        event = self._error_event(err)
        await self._send({"type": "http.response.body", "body": event, "more_body": False})

    def _finish(self) -> None:
        """The response is about to complete: a later disconnect is just its end."""
        self.done = True
        if self.guard is not None:
            self.guard.finish()


class CompletionsRoute:
    """One generation route (``api``: chat, completions, responses or messages)."""

    def __init__(
        self,
        api: Api,
        service: CompletionService,
        access: Access,
        metrics: GatewayMetrics,
        body_limit: int,
        access_log: AccessLog,
    ) -> None:
        self.access_log = access_log
        self.call_args = (api.kind, api.path)
        self.error_event = api.stream.error_event
        self.kind = api.kind
        self.service = service
        self.access = access
        self.metrics = metrics
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = self.metrics
        t0 = time.perf_counter()
        sink = AsgiSink(send, request_id(scope), self.error_event)
        call: Call | None = None
        status = 500
        try:
            tenant = self.access.authenticate(scope["headers"])
            body = await read_body(scope, receive, self.body_limit)
            call = Call(
                *self.call_args, body, tenant, sink.headers[0][1], t0, trace_headers(scope),
                scope.get("http_version") == "1.0",
            )  # fmt: skip
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
            if call is not None and call.progress.phase is not None:
                m.disconnects.labels(call.progress.phase).inc()
        except Exception:
            rid = sink.headers[0][1]
            log.exception("unexpected error on %s (request %s)", self.kind, rid.decode())
            status = 500
            if not sink.done:
                await sink.fail(internal_error(rid))
        finally:
            if sink.guard is not None:
                sink.guard.close()
            m.request(self.kind, status)
            duration = time.perf_counter() - t0
            m.latency.labels(self.kind).observe(duration)
            if call is None:
                self.access_log.emit(request_id=sink.headers[0][1], key=None, route=self.kind,
                                     status=status, duration_s=duration)  # fmt: skip
            else:
                p = call.progress
                self.access_log.emit(
                    request_id=call.request_id, key=call.tenant.label, route=self.kind,
                    status=status, duration_s=duration, prompt_tokens=p.prompt_tokens,
                    completion_tokens=p.completion_tokens, queue_wait_s=p.queue_wait_s,
                    ttft_s=p.ttft_s, replica=p.replica,
                    resumed_from=p.resume.resumed_from if p.resume else None,
                )  # fmt: skip
