"""The completion service: one generation request, from its body to the engine's answer relayed.

Between the routes (which only translate HTTP) and the parts (validation, token counter,
admission, engine client), in the way TGI's ``Infer`` stands between its ``server.rs`` and its
validation and queue. Order of work, cheapest refusal first:

    parse (schema + policy, pure) -> serving state (503) -> token count (only if the prompt
    could be too long) -> finalize (context and streaming policy) -> admission slot (429 or
    queue, keep-alives while queued) -> forward -> relay

Everything the service learns goes to a ``Sink`` that the route implements over ASGI; the service
never sees ASGI. Until the first byte is out every refusal is an ``OpenAIError`` raised to the
route, which renders it as an HTTP status with OpenAI error JSON. A streaming request that has
queued longer than ``GATEWAY_QUEUE_KEEPALIVE_S`` gets its SSE response started early so that
comments keep the connection alive; after that point a refusal is a terminal SSE error event
(the sink knows which of the two to render).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import httpx

from gateway.admission import Admission
from gateway.apis import APIS
from gateway.errors import OpenAIError, engine_message, reshape_engine_error
from gateway.health import HealthTracker, unavailable
from gateway.metrics import GatewayMetrics
from gateway.policy import Policy
from gateway.upstream import StreamStats, relay_sse, upstream_error
from gateway.validation import Final, Kind, finalize, needs_count, parse
from gateway.wire import EngineResponse

_JSON_HEADER = b"content-type: application/json\r\n"


class Sink(Protocol):
    """Where one answer goes: implemented by the route over ASGI (and by tests over a list)."""

    @property
    def started(self) -> bool:
        """Whether a streamed response has begun (errors are then SSE events)."""
        ...

    def add_header(self, name: bytes, value: bytes) -> None: ...

    async def keepalive(self) -> None:
        """Start the SSE response if needed and send a comment (the request is queued)."""

    async def reply(self, status: int, body: bytes, content_type: bytes) -> None:
        """A whole answer at once (non-streaming, or the engine refused before streaming)."""

    async def open(self) -> None:
        """Start the SSE response (headers), unless a keep-alive already did."""

    async def chunk(self, data: bytes) -> None:
        """Streamed bytes, as the engine sent them."""

    async def end(self) -> None:
        """The stream finished normally."""

    async def fail(self, err: OpenAIError) -> None:
        """An error status before anything was sent, else a terminal SSE error event."""


class Engine(Protocol):
    """What the service needs of the token path's client (``gateway.wire.EnginePool``)."""

    async def request(
        self, method: str, path: str, body: bytes, headers: bytes, read_timeout: float
    ) -> EngineResponse: ...


class Counter(Protocol):
    """Prompt token counting (``gateway.tokens.TokenCounter``)."""

    async def count(self, parsed: object, request_id: str) -> int | None: ...


class Liveness(Protocol):
    """The engine monitor's "check liveness now" (``gateway.monitor.EngineMonitor.poke``)."""

    def poke(self) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    stream_idle_s: float  # a stream's silence between two reads
    request_s: float  # a non-streaming answer
    queue_keepalive_s: float  # SSE comment interval while a stream queues (0: never)


class Call:
    """One generation request as the route hands it over; ``phase`` tells where it is now."""

    __slots__ = (
        "body", "caller", "completion_tokens", "forward", "http10", "kind", "path", "phase",
        "prompt_tokens", "queue_wait_s", "request_id", "started_at", "ttft_s",
    )  # fmt: skip

    def __init__(
        self,
        kind: Kind,
        path: str,
        body: bytes,
        caller: str,
        request_id: bytes,
        started_at: float | None = None,
        forward: bytes = b"",
        http10: bool = False,
    ) -> None:
        self.kind: Kind = kind
        self.path = path
        self.body = body
        self.caller = caller
        self.request_id = request_id
        self.started_at = time.perf_counter() if started_at is None else started_at  # for TTFT
        self.forward = forward  # header lines passed to the engine as sent (trace context)
        self.http10 = http10  # an HTTP/1.0 client cannot read a chunked (streamed) answer
        self.phase: str | None = None  # None (preparing), "queued", "upstream"
        # What the service learned, for the access log.
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.queue_wait_s: float | None = None
        self.ttft_s: float | None = None


class CompletionService:
    def __init__(
        self,
        *,
        policy: Policy,
        health: HealthTracker,
        tokens: Counter,
        admission: Admission,
        engine: Engine,
        liveness: Liveness,
        metrics: GatewayMetrics,
        timeouts: Timeouts,
    ) -> None:
        self.policy = policy
        self.health = health
        self.tokens = tokens
        self.admission = admission
        self.engine = engine
        self.liveness = liveness
        self.metrics = metrics
        self.timeouts = timeouts

    async def run(self, call: Call, sink: Sink) -> int:
        """Serve ``call`` into ``sink``; returns the status for the access metrics.

        Raises ``OpenAIError`` for the route to render and count (``sink.fail``); a failure of
        the engine after the stream started is rendered here and returned as a status.
        """
        final = await self.prepare(call)
        if final.stream and call.http10:
            raise OpenAIError(
                400, 'streaming needs HTTP/1.1 (the stream is sent chunked); use HTTP/1.1 or '
                '"stream": false', code="stream_needs_http11", param="stream",
            )  # fmt: skip
        if final.stripped:
            sink.add_header(b"x-gateway-stripped-params", ", ".join(final.stripped).encode())
        call.phase = "queued"
        on_wait = sink.keepalive if final.stream and self.timeouts.queue_keepalive_s > 0 else None
        async with self.admission.slot(call.caller, on_wait, self.timeouts.queue_keepalive_s) as t:
            call.phase = "upstream"
            call.queue_wait_s = t.queued_s
            self.metrics.queue_wait.observe(t.queued_s)
            for name, value in self.admission.rate_headers():
                sink.add_header(name, value)
            return await self._forward(call, final, sink)

    async def prepare(self, call: Call) -> Final:
        """Validate and count: the forwardable body, or an ``OpenAIError``."""
        policy = self.policy
        parsed = parse(call.kind, call.body, policy)
        snap = self.health.snapshot()
        if not snap.ready:
            raise unavailable(snap)
        prompt_tokens = None
        if needs_count(parsed, policy):
            prompt_tokens = await self.tokens.count(parsed, call.request_id.decode())
        outcome = "skipped" if prompt_tokens is None else "counted"
        self.metrics.token_counts.labels(outcome).inc()
        final = finalize(parsed, prompt_tokens, policy)
        call.prompt_tokens = final.prompt_tokens
        return final

    async def _forward(self, call: Call, final: Final, sink: Sink) -> int:
        timeout = self.timeouts.stream_idle_s if final.stream else self.timeouts.request_s
        headers = _JSON_HEADER + b"x-request-id: " + call.request_id + b"\r\n" + call.forward
        try:
            response = await self.engine.request("POST", call.path, final.body, headers, timeout)
        except httpx.HTTPError as exc:
            raise self._upstream_failed(exc, final.stream) from None
        try:
            if response.status_code != 200 or not final.stream:
                try:
                    data = await response.aread()
                except httpx.HTTPError as exc:
                    raise self._upstream_failed(exc, final.stream) from None
                if sink.started:  # only streams start early; the engine refused after all
                    status = response.status_code
                    await sink.fail(OpenAIError(status, engine_message(data), code="engine_error"))
                    return status
                status = response.status_code
                if status != 200:  # the engine refused: its message, in OpenAI's shape
                    await sink.reply(
                        status, reshape_engine_error(status, data), b"application/json"
                    )
                    return status
                ctype = response.headers.get(b"content-type", b"application/json")
                found = APIS[call.kind].stream.usage.findall(data)
                call.completion_tokens = int(found[-1]) if found else None
                await sink.reply(status, data, ctype)
                return status
            return await self._relay(call, response, sink)
        finally:
            response.close()

    async def _relay(self, call: Call, response: EngineResponse, sink: Sink) -> int:
        await sink.open()
        stats = StreamStats(APIS[call.kind].stream)
        try:
            await relay_sse(response, sink.chunk, stats)
        except httpx.HTTPError as exc:
            self.metrics.upstream_errors.labels(type(exc).__name__).inc()
            self.liveness.poke()
            await sink.fail(upstream_error(exc, streaming=True))
            return 502
        finally:
            if stats.first_chunk_at is not None:
                call.ttft_s = stats.first_chunk_at - call.started_at
                self.metrics.ttft.labels(call.kind).observe(call.ttft_s)
            call.completion_tokens = stats.completion_tokens()
            self.metrics.tokens_streamed.inc(call.completion_tokens)
        if not stats.done:
            self.liveness.poke()
            await sink.fail(
                OpenAIError(502, "the engine ended the stream early", code="engine_connection_lost")
            )
            return 502
        await sink.end()
        return 200

    def _upstream_failed(self, exc: httpx.HTTPError, streaming: bool) -> OpenAIError:
        self.metrics.upstream_errors.labels(type(exc).__name__).inc()
        self.liveness.poke()
        return upstream_error(exc, streaming=streaming)
