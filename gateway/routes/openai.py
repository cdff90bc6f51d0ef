"""``/v1/chat/completions`` and ``/v1/completions``: validate, admit, proxy. Plus passthroughs.

Order of work per request, cheapest refusal first: auth -> body size -> validation (pure) ->
serving state (503) -> token count (only if the prompt could be too long) -> admission (429 or
queue) -> upstream. Until the first byte goes out, every refusal is an HTTP status with OpenAI
error JSON. A streaming request that has to queue longer than ``GATEWAY_QUEUE_KEEPALIVE_S``
gets its SSE response started early so that SSE comments can keep the connection alive; after
that point a refusal (wait timeout, engine fault) is a terminal SSE error event plus
``data: [DONE]``, which the OpenAI SDK raises as an ``APIError``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import httpx

from gateway import validation
from gateway.admission import Ticket
from gateway.asgi import (
    JSON,
    ClientGone,
    DisconnectGuard,
    Receive,
    Scope,
    Send,
    read_body,
    request_id,
    send_bytes,
    send_error,
)
from gateway.errors import OpenAIError
from gateway.upstream import StreamStats, relay_sse, upstream_error

if TYPE_CHECKING:
    from gateway.app import Gateway

CLIENT_CLOSED = 499  # nginx's status for "client went away": recorded in metrics only
_KEEPALIVE = {"type": "http.response.body", "body": b": queued\n\n", "more_body": True}
_END = {"type": "http.response.body", "body": b"", "more_body": False}
_JSON = b"content-type: application/json\r\n"

_REASONS = {
    "queue_full": "queue_full",
    "wait_timeout": "wait_timeout",
    "per_key_limit": "per_key_limit",
    "engine_down": "engine_down",
    "warming_up": "warming",
    "warmup_failed": "warming",
    "invalid_api_key": "auth",
}


def rejection_reason(err: OpenAIError) -> str:
    reason = _REASONS.get(err.code or "")
    if reason:
        return reason
    return "validation" if 400 <= err.status < 500 else (err.code or "upstream")


class CompletionsEndpoint:
    """One of the two generation routes (``kind`` chat or completions)."""

    def __init__(self, gw: Gateway, kind: validation.Kind, path: str) -> None:
        self.gw = gw
        self.kind: validation.Kind = kind
        self.path = path
        self.route = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        t0 = time.perf_counter()
        rid = request_id(scope)
        guard: DisconnectGuard | None = None
        status = 500
        try:
            caller = gw.authenticate(scope)
            raw = await read_body(scope, receive, gw.policy.max_body_bytes)
            guard = DisconnectGuard(receive)
            status = await self._serve(raw, caller, rid, send, guard, t0)
        except OpenAIError as err:  # raised only before anything was sent
            if guard is not None:
                guard.finish()
            gw.metrics.reject(rejection_reason(err))
            status = err.status
            await send_error(send, err, [(b"x-request-id", rid)])
        except ClientGone:
            status = CLIENT_CLOSED
            gw.metrics.disconnects.labels("request").inc()
        except asyncio.CancelledError:
            if guard is None or not guard.absorb():
                raise
            status = CLIENT_CLOSED
        finally:
            if guard is not None:
                guard.close()
            gw.metrics.request(self.route, status)
            gw.metrics.latency.labels(self.route).observe(time.perf_counter() - t0)

    async def _serve(
        self, raw: bytes, caller: str, rid: bytes, send: Send, guard: DisconnectGuard, t0: float
    ) -> int:
        gw = self.gw
        policy = gw.policy
        parsed = validation.parse(self.kind, raw, policy)
        snap = gw.health.snapshot()
        if not snap.ready:
            raise gw.unavailable(snap)
        prompt_tokens = None
        if validation.needs_count(parsed, policy):
            assert gw.tokens is not None
            prompt_tokens = await gw.tokens.count(parsed, rid.decode())
            gw.metrics.token_counts.labels("counted").inc()
        final = validation.finalize(parsed, prompt_tokens, policy)

        headers = [(b"x-request-id", rid)]
        if final.stripped:
            headers.append((b"x-gateway-stripped-params", ", ".join(final.stripped).encode()))
        sse = _SSE(send, headers)
        try:
            ticket = await self._admit(caller, final.stream, sse)
        except OpenAIError as err:
            if not sse.started:
                raise
            gw.metrics.reject(rejection_reason(err))
            await sse.fail(err, guard)
            return err.status
        except asyncio.CancelledError:
            if guard.disconnected:
                gw.metrics.disconnects.labels("queued").inc()
            raise
        gw.metrics.queue_wait.observe(ticket.queued_s)
        try:
            return await self._forward(final, rid, sse, guard, t0)
        except asyncio.CancelledError:
            if guard.disconnected:
                gw.metrics.disconnects.labels("upstream").inc()
            raise
        finally:
            gw.admission.release(ticket)

    async def _admit(self, caller: str, stream: bool, sse: _SSE) -> Ticket:
        adm = self.gw.admission
        ticket = adm.try_admit(caller)
        if ticket is not None:
            return ticket
        waiter = adm.enqueue(caller)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + adm.queue_timeout_s
        keepalive = self.gw.settings.queue_keepalive_s if stream else 0.0
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise adm.timed_out(waiter)
                ticket = await adm.wait(waiter, min(remaining, keepalive or remaining))
                if ticket is not None:
                    return ticket
                if keepalive and deadline - loop.time() > 0:
                    await sse.start()
                    await sse.send(_KEEPALIVE)
        except BaseException:
            adm.cancel(waiter)  # no-op if already out of the queue; frees a slot granted late
            raise

    async def _forward(
        self, final: validation.Final, rid: bytes, sse: _SSE, guard: DisconnectGuard, t0: float
    ) -> int:
        gw = self.gw
        assert gw.pool is not None and gw.monitor is not None
        s = gw.settings
        read_timeout = s.stream_idle_timeout_s if final.stream else s.request_timeout_s
        try:
            response = await gw.pool.request(
                "POST", self.path, final.body, _JSON + b"x-request-id: " + rid + b"\r\n",
                read_timeout,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            return await self._upstream_failed(exc, sse, guard, final.stream)
        try:
            if response.status_code != 200 or not final.stream:
                try:
                    data = await response.aread()
                except httpx.HTTPError as exc:
                    return await self._upstream_failed(exc, sse, guard, final.stream)
                if sse.started:  # only streams start early; the engine refused after all
                    err = OpenAIError(response.status_code, _message(data), code="engine_error")
                    await sse.fail(err, guard)
                    return response.status_code
                ctype = response.headers.get(b"content-type", b"application/json")
                guard.finish()
                await send_bytes(sse.send, response.status_code, data, ctype, sse.headers)
                return response.status_code

            await sse.start()
            stats = StreamStats()
            try:
                await relay_sse(response, sse.send, stats)
            except httpx.HTTPError as exc:
                gw.metrics.upstream_errors.labels(type(exc).__name__).inc()
                gw.monitor.poke()
                await sse.fail(upstream_error(exc, streaming=True), guard)
                return 502
            finally:
                if stats.first_chunk_at is not None:
                    gw.metrics.ttft.labels(self.route).observe(stats.first_chunk_at - t0)
                gw.metrics.tokens_streamed.inc(
                    stats.completion_tokens(1 if self.kind == "chat" else 0)
                )
            if not stats.done:
                gw.monitor.poke()
                err = OpenAIError(502, "the engine ended the stream early",
                                  code="engine_connection_lost")  # fmt: skip
                await sse.fail(err, guard)
                return 502
            guard.finish()
            await sse.send(_END)
            return 200
        finally:
            response.close()

    async def _upstream_failed(
        self, exc: httpx.HTTPError, sse: _SSE, guard: DisconnectGuard, streaming: bool
    ) -> int:
        gw = self.gw
        assert gw.monitor is not None
        gw.metrics.upstream_errors.labels(type(exc).__name__).inc()
        gw.monitor.poke()
        err = upstream_error(exc, streaming=streaming)
        if not sse.started:
            raise err
        gw.metrics.reject(rejection_reason(err))
        await sse.fail(err, guard)
        return err.status


class _SSE:
    """The client side of one response: SSE headers sent at most once, terminal errors."""

    __slots__ = ("headers", "send", "started")

    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        self.send = send
        self.headers = headers
        self.started = False

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    *self.headers,
                ],
            }
        )

    async def fail(self, err: OpenAIError, guard: DisconnectGuard) -> None:
        """Terminal SSE error event then ``[DONE]``, and end the response."""
        await self.start()
        guard.finish()
        await self.send({"type": "http.response.body", "body": err.sse_event(), "more_body": False})


def _message(data: bytes) -> str:
    try:
        err = json.loads(data).get("error", {})
        return str(err.get("message") or data[:500].decode(errors="replace"))
    except (ValueError, AttributeError):
        return data[:500].decode(errors="replace")


class Passthrough:
    """Authorised passthrough for engine utility routes (``/v1/models``, ``/tokenize`` ...)."""

    def __init__(self, gw: Gateway, method: str, path: str, route: str) -> None:
        self.gw = gw
        self.method = method
        self.path = path
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        rid = request_id(scope)
        headers = [(b"x-request-id", rid)]
        try:
            gw.authenticate(scope)
            body = b""
            if self.method == "POST":
                body = await read_body(scope, receive, gw.policy.max_body_bytes)
            assert gw.aux is not None
            try:
                r = await gw.aux.request(
                    self.method, self.path, content=body or None,
                    headers={"content-type": "application/json", "x-request-id": rid.decode()},
                    timeout=gw.settings.tokenize_timeout_s,
                )  # fmt: skip
            except httpx.HTTPError as exc:
                raise upstream_error(exc) from None
        except OpenAIError as err:
            gw.metrics.reject(rejection_reason(err))
            gw.metrics.request(self.route, err.status)
            await send_error(send, err, headers)
            return
        except ClientGone:
            return
        ctype = r.headers.get("content-type", "application/json").encode()
        gw.metrics.request(self.route, r.status_code)
        await send_bytes(send, r.status_code, r.content, ctype or JSON, headers)
