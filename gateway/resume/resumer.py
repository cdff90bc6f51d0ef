"""After the first byte: continue a broken stream on another replica, or end it in OpenAI's shape.

``CompletionService`` relays a stream; when the relay ends without the stream's end (the
connection reset or closed, a read timeout, the engine's own error event), it hands the stream
here. Without a resume state (``GATEWAY_RESUME=off``, one replica, a Responses or Messages
stream, ``n`` > 1) the client gets the terminal error event, as before resume existed, with the
engine's error event reshaped like every other gateway error. With one, up to
``GATEWAY_RESUME_MAX`` times: read what the client has (``transcript``), build the continuation
(``continuation``), send it to another routable replica (never one that already failed this
stream), relay its events through the ``Rewriter`` into the same client stream. The admission
slot is the one the request already holds, and the token accounting settles once, from the one
final usage. A client that goes away cancels the request's task, so nothing is continued after a
disconnect. Each broken stream counts once in ``gateway_stream_resumes_total{outcome}``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Protocol

import httpx

from gateway.apis import APIS, Kind
from gateway.errors import OpenAIError
from gateway.metrics import GatewayMetrics
from gateway.replicas.replica import Replica
from gateway.resume.continuation import Continuation, Finished, NotResumable, build
from gateway.resume.policy import Resumable, ResumePolicy, begin
from gateway.resume.rewrite import Rewriter, ending
from gateway.resume.transcript import Delivered
from gateway.routing.base import Request as RouteRequest
from gateway.tracing import RequestTrace
from gateway.upstream.relay import (
    EngineErrorEvent,
    EventFilter,
    StreamStats,
    relay_sse,
    upstream_error,
)
from protocol.engine_errors import engine_message

if TYPE_CHECKING:
    from gateway.request.validation import Final

log = logging.getLogger("gateway.resume")
_JSON_HEADER = b"content-type: application/json\r\n"


class StreamSink(Protocol):
    """The part of ``service.Sink`` a stream that already started uses."""

    async def chunk(self, data: bytes) -> None: ...

    async def end(self) -> None: ...

    async def fail(self, err: OpenAIError) -> None: ...


class Progress(Protocol):
    """What the resumer reads and writes of a request's progress (``call.Progress``: the
    resumer is a part of the service, its one writer)."""

    resume: Resumable | None
    strip_usage: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_tail: bytes
    route: RouteRequest
    replica: str | None
    trace: RequestTrace


class Stream(Protocol):
    """The request whose stream broke (``call.Call``)."""

    @property
    def kind(self) -> Kind: ...

    @property
    def request_id(self) -> bytes: ...

    @property
    def forward(self) -> bytes: ...

    @property
    def progress(self) -> Progress: ...


class Upstreams(Protocol):
    @property
    def replicas(self) -> list[Replica]: ...

    def pick(self, request: RouteRequest, exclude: tuple[Replica, ...] = ()) -> Replica | None: ...


class ContinuationRefused(Exception):
    """The continuation's replica answered it with a 5xx (its engine, not the request)."""


class EndedEarly(Exception):
    """A stream that ended without its end marker (``[DONE]``)."""


def stream_failure(broke: BaseException | None) -> OpenAIError:
    """The terminal error for a stream that broke: an httpx failure (``upstream_error``), the
    engine's error event (reshaped), or an end without the end marker."""
    if isinstance(broke, EngineErrorEvent):
        return broke.error()
    if isinstance(broke, httpx.HTTPError):
        return upstream_error(broke, streaming=True)
    return OpenAIError(502, "the engine ended the stream early", code="engine_connection_lost")


class Resumer:
    def __init__(
        self,
        policy: ResumePolicy,
        upstreams: Upstreams,
        metrics: GatewayMetrics,
        stream_idle_s: float,
    ) -> None:
        self.policy = policy
        self.upstreams = upstreams
        self.metrics = metrics
        self.stream_idle_s = stream_idle_s

    def begin(self, call: Stream, final: Final) -> Final:
        """Before the request is sent: its resume state on ``call.progress.resume`` (None: not
        resumable) and the body to send (with the token-ids member when the gateway asks)."""
        final, call.progress.resume = begin(
            self.policy, call.kind, final, len(self.upstreams.replicas)
        )
        return final

    def events(self, call: Stream) -> EventFilter | None:
        """The relay's filter: Chat and Completions streams (None: relayed as they come)."""
        if APIS[call.kind].resume is None:
            return None
        state: Resumable | None = call.progress.resume
        if state is None:
            return EventFilter(call.progress.strip_usage)
        return EventFilter(call.progress.strip_usage, state.strip_ids, state.transcript)

    async def broken(
        self, call: Stream, sink: StreamSink, replica: Replica, broke: BaseException | None
    ) -> int:
        """The stream from ``replica`` broke after its first byte: continue it elsewhere, or
        end it with the terminal error event (the first break's: what the client's stream
        lost). Returns the status for the access metrics."""
        err = self._failed(replica, broke)
        state: Resumable | None = call.progress.resume
        if state is None:
            await sink.fail(err)
            return err.status
        tried = (replica,)
        while True:
            delivered = state.transcript.delivered()
            try:
                plan = build(state, delivered, call.progress.prompt_tokens)
            except NotResumable as exc:
                return await self._give_up(call, sink, err, "not_resumable", exc.reason)
            if isinstance(plan, Finished):  # nothing left to generate: end it here
                tail = ending(state.fmt, delivered, plan)
                await sink.chunk(
                    EventFilter(call.progress.strip_usage, state.strip_ids).events(tail)
                )
                call.progress.completion_tokens, call.progress.usage_tail = plan.delivered, tail
                self.metrics.stream_resumes.labels("finished").inc()
                await sink.end()
                return 200
            if state.continuations >= self.policy.max_continuations:
                return await self._give_up(call, sink, err, "exhausted", "GATEWAY_RESUME_MAX")
            other = self.upstreams.pick(call.progress.route, tried)
            if other is None:
                return await self._give_up(call, sink, err, "no_replica", "no other replica")
            state.continuations += 1
            previous = replica.name
            state.resumed_from = (
                f"{state.resumed_from},{previous}" if state.resumed_from else previous
            )
            call.progress.replica = other.name
            log.info(
                "stream %s broke on %s after %d tokens (%s): continuing on %s (%s)",
                call.request_id.decode(), previous, delivered.tokens, err.code, other.name,
                plan.strategy,
            )  # fmt: skip
            failure = await self._continue(call, sink, other, plan, delivered)
            if failure is None:
                self.metrics.stream_resumes.labels("resumed").inc()
                await sink.end()
                return 200
            if isinstance(failure, OpenAIError):  # refused: a later replica would refuse too
                return await self._give_up(call, sink, err, "refused", failure.message)
            self._failed(other, failure)
            tried, replica = (*tried, other), other

    async def _continue(
        self,
        call: Stream,
        sink: StreamSink,
        replica: Replica,
        plan: Continuation,
        delivered: Delivered,
    ) -> BaseException | OpenAIError | None:
        """One continuation on ``replica``: None when it finished the stream, else why not
        (an ``OpenAIError`` when the engine refused it, the failure when it broke)."""
        state: Resumable = call.progress.resume
        rid = b"%s-resume%d" % (call.request_id, state.continuations)
        headers = _JSON_HEADER + b"x-request-id: " + rid + b"\r\n" + call.forward
        rewriter = Rewriter(state.fmt, plan, delivered)
        attempt = call.progress.trace.attempt(replica.name, state.continuations + 1, "resume")
        with replica.lease(), attempt as at:
            try:
                response = await replica.pool.request(
                    "POST", plan.path, plan.body, at.forward(headers), self.stream_idle_s
                )
            except httpx.TransportError as exc:
                at.error(exc)
                return exc
            try:
                if response.status_code != 200:
                    data = b""
                    with contextlib.suppress(httpx.HTTPError):
                        data = await response.aread()
                    at.error(f"engine refused the continuation: {response.status_code}")
                    if response.status_code >= 500:  # the engine, not the request: try on
                        return ContinuationRefused(response.status_code)
                    return OpenAIError(response.status_code, engine_message(data))
                if self.policy.comment:
                    await sink.chunk(b": resumed after %d tokens (continuation %d)\n\n" % (
                        plan.delivered, state.continuations))  # fmt: skip
                stats = StreamStats(APIS[call.kind].stream, call.progress.strip_usage)
                events = EventFilter(
                    call.progress.strip_usage, state.strip_ids, state.transcript, rewriter
                )
                try:
                    await relay_sse(response, sink.chunk, stats, events)
                except (httpx.HTTPError, EngineErrorEvent) as exc:
                    at.error(exc)
                    return exc
                finally:
                    self.metrics.tokens_streamed.inc(rewriter.tokens)
                    call.progress.completion_tokens = rewriter.completion_tokens
                    call.progress.usage_tail = rewriter.usage_event or call.progress.usage_tail
                return None if stats.done else EndedEarly()
            finally:
                response.close()

    def _failed(self, replica: Replica, broke: BaseException | None) -> OpenAIError:
        """Count the failure, have the replica's health checked at once, map it."""
        self.metrics.upstream_errors.labels(type(broke or EndedEarly()).__name__).inc()
        replica.monitor.poke()
        return stream_failure(broke)

    async def _give_up(
        self, call: Stream, sink: StreamSink, err: OpenAIError, outcome: str, why: str
    ) -> int:
        log.info("stream %s not continued (%s: %s)", call.request_id.decode(), outcome, why)
        self.metrics.stream_resumes.labels(outcome).inc()
        await sink.fail(err)
        return err.status
