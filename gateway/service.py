"""The completion service: one generation request, from its body to the engine's answer relayed.

Between the routes (which only translate HTTP) and the parts (validation, token counter,
admission, engine client), in the way TGI's ``Infer`` stands between its ``server.rs`` and its
validation and queue. Order of work, cheapest refusal first:

    parse (schema + policy, pure) -> serving state (503) -> token count (only if the prompt
    could be too long) -> finalize (context and streaming policy) -> admission slot (429 or
    queue, keep-alives while queued) -> pick a replica -> forward (fail over once) -> relay

Failover: a replica that fails *before its answer started* (refused or reset connection, a
connect timeout, a 503) is marked down at once and the request is sent once more, to another
replica: the engine produced nothing the client saw, so a retry cannot duplicate output. A slow
answer (read timeout) is not retried (the engine is busy, not gone: a retry doubles its load);
after the first byte ``gateway/resume/`` continues the stream elsewhere, or ends it with an error.

Everything the service learns goes to a ``Sink`` that the route implements over ASGI; the service
never sees ASGI. Until the first byte is out every refusal is an ``OpenAIError`` raised to the
route, which renders it as an HTTP status with OpenAI error JSON. A streaming request that has
queued longer than ``GATEWAY_QUEUE_KEEPALIVE_S`` gets its SSE response started early so that
comments keep the connection alive; after that point a refusal is a terminal SSE error event
(the sink knows which of the two to render).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Protocol

import httpx

from gateway.admission.core import Admission
from gateway.apis import APIS
from gateway.call import Call, Progress, Timeouts
from gateway.errors import OpenAIError, reshape_engine_error
from gateway.metrics import GatewayMetrics
from gateway.replicas.health import Snapshot, unavailable
from gateway.replicas.replica import Replica
from gateway.request.policy import Policy
from gateway.request.validation import Final, finalize, needs_count, parse
from gateway.resume import RESUME_OFF, ResumePolicy, Resumer
from gateway.routing.base import Request as RouteRequest
from gateway.tenancy.core import Tenancy, Used, usage_of
from gateway.tracing import NO_TRACING, Attr, Step, Tracing
from gateway.upstream.relay import EngineErrorEvent, StreamStats, relay_sse, upstream_error
from gateway.upstream.wire import EngineResponse
from protocol.engine_errors import engine_message

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


class Upstreams(Protocol):
    """The engine replicas (``gateway.replicas.core.ReplicaSet``): may we serve, and where."""

    def serving(self) -> Snapshot: ...

    def pick(self, request: RouteRequest, exclude: tuple[Replica, ...] = ()) -> Replica | None: ...

    @property
    def wants_tokens(self) -> bool:
        """Whether routing scores the prompt's token ids (``GATEWAY_ROUTING=kv``)."""
        ...

    @property
    def replicas(self) -> list[Replica]:
        """Every replica (the routing span's candidates, read only when tracing records)."""
        ...


class Charges(Protocol):
    """The chip-time ledger (``gateway.ledger.Ledger``): a finished request's work."""

    def finished(
        self, replica: str, key: str, prompt: int, cached: int, completion: int
    ) -> None: ...


class Counter(Protocol):
    """Prompt token counting (``gateway.request.tokens.TokenCounter``)."""

    async def count(self, parsed: object, request_id: str) -> int | None: ...

    async def ids(self, parsed: object, request_id: str) -> list[int] | None: ...


class CompletionService:
    def __init__(
        self,
        *,
        policy: Policy,
        upstreams: Upstreams,
        tokens: Counter,
        admission: Admission,
        metrics: GatewayMetrics,
        timeouts: Timeouts,
        tenancy: Tenancy | None = None,
        tracing: Tracing = NO_TRACING,
        ledger: Charges | None = None,
        resume: ResumePolicy = RESUME_OFF,
    ) -> None:
        self.tracing = tracing
        self.ledger = ledger
        self.tenancy = tenancy or Tenancy.open(metrics)  # per-key limits and accounting
        self.policy = policy
        self.upstreams = upstreams
        self.tokens = tokens
        self.admission = admission
        self.metrics = metrics
        self.timeouts = timeouts
        self.resume = Resumer(resume, upstreams, metrics, timeouts.stream_idle_s)

    async def run(self, call: Call, sink: Sink) -> int:
        """Serve ``call`` into ``sink``; returns the status for the access metrics.

        Raises ``OpenAIError`` for the route to render and count (``sink.fail``); a failure of
        the engine after the stream started is rendered here and returned as a status.
        """
        tenant = call.tenant
        trace = call.progress.trace = self.tracing.start(
            call.path, call.request_id, tenant.label, call.forward
        )
        status = 499  # cancelled: the client went away
        try:
            status = await self._run(call, sink)
            return status
        except OpenAIError as err:
            status = err.status
            answer = self.tenancy.rejected(tenant, err)  # per-key count, the key's windows
            if answer is err:
                raise
            status = answer.status
            raise answer from err
        except Exception:
            status = 500
            raise
        finally:
            trace.end(status)

    async def _run(self, call: Call, sink: Sink) -> int:
        tenant, p = call.tenant, call.progress
        final = await self.prepare(call)
        if final.stream and call.http10:
            raise OpenAIError(
                400, 'streaming needs HTTP/1.1 (the stream is sent chunked); use HTTP/1.1 or '
                '"stream": false', code="stream_needs_http11", param="stream",
            )  # fmt: skip
        if final.stripped:
            sink.add_header(b"x-gateway-stripped-params", ", ".join(final.stripped).encode())
        p.strip_usage = final.strip_usage
        final = self.resume.begin(call, final)  # a resumable stream: its state, the body to send
        # The key's rate limits: one request and prompt + max_tokens reserved (429 otherwise),
        # settled from the engine's usage however the request ends.
        with p.trace.step("admission") as step:
            step.set("gateway.key", tenant.label)
            reservation = await self.tenancy.reserve(
                tenant, final.prompt_bound, final.max_tokens * final.sequences
            )
        ahead = self.admission.queued  # the queue's length on arrival (the queue span)
        p.phase = "queued"
        on_wait = sink.keepalive if final.stream and self.timeouts.queue_keepalive_s > 0 else None
        tick = self.timeouts.queue_keepalive_s
        # Its cost in the fair order between keys: its prompt (the count, else ~4 bytes a token),
        # then what it generated, settled on release (``fairqueue``: not the loose tpm bound).
        prompt = final.prompt_tokens if final.prompt_tokens is not None else len(final.body) / 4
        sched = replace(tenant.sched, cost=prompt)
        used: Used | None = None  # what the engine reported, once it answered
        try:
            async with self.admission.slot(tenant.label, on_wait, tick, sched) as t:
                p.phase = "upstream"
                p.queue_wait_s = t.queued_s
                p.trace.done("queue wait", t.queued_s, {"gateway.queue.class": sched.name,
                                "gateway.queue.position": ahead})  # fmt: skip
                self.metrics.queue_wait.observe(t.queued_s)
                self.metrics.key_admitted(tenant.label, sched.name, t.queued_s)
                for name, value in self.tenancy.headers(reservation, self.admission):
                    sink.add_header(name, value)
                try:
                    return await self._forward(call, final, sink)
                finally:
                    used = _used(call)  # known here, so that the slot's release settles it
                    t.used = None if used is None else used.prompt + used.completion
        finally:
            self.tenancy.settle(reservation, p.phase == "upstream", used)
            if self.ledger is not None and used is not None and p.replica is not None:
                self.ledger.finished(p.replica, tenant.label, used.prompt, used.cached,
                                     used.completion)  # fmt: skip

    async def prepare(self, call: Call) -> Final:
        """Validate and count: the forwardable body, or an ``OpenAIError``."""
        tenant, p = call.tenant, call.progress
        policy = self.tenancy.policy_for(tenant, self.policy)
        with p.trace.step("validate"):
            parsed = parse(call.kind, call.body, policy)
            self.tenancy.check(tenant, parsed.model, parsed.max_tokens, parsed.max_tokens_param)
        snap = self.upstreams.serving()
        if not snap.ready:
            raise unavailable(snap)
        p.route = RouteRequest(parsed.kind, parsed.body)
        prompt_tokens = None
        if self.upstreams.wants_tokens:  # kv routing: the engine's own token ids
            p.route.tokens = await self.tokens.ids(parsed, call.request_id.decode())
            if p.route.tokens is not None:  # one prompt: its count, for free
                prompt_tokens = len(p.route.tokens)
        # A key with a tpm is charged the engine's count, not the loose byte bound.
        exact = parsed.exact_prompt_tokens is not None
        if prompt_tokens is None and (
            needs_count(parsed, policy) or (tenant.tpm is not None and not exact)
        ):
            with p.trace.step("count tokens") as step:
                prompt_tokens = await self.tokens.count(parsed, call.request_id.decode())
                step.set("gateway.prompt_tokens", -1 if prompt_tokens is None else prompt_tokens)
        outcome = "skipped" if prompt_tokens is None else "counted"
        self.metrics.token_counts.labels(outcome).inc()
        final = finalize(parsed, prompt_tokens, policy)
        p.prompt_tokens = final.prompt_tokens
        return final

    async def _forward(self, call: Call, final: Final, sink: Sink) -> int:
        timeout = self.timeouts.stream_idle_s if final.stream else self.timeouts.request_s
        headers = _JSON_HEADER + b"x-request-id: " + call.request_id + b"\r\n" + call.forward
        p = call.progress
        tried: tuple[Replica, ...] = ()
        failure: httpx.TransportError | None = None
        while True:
            with p.trace.step("route") as step:
                replica = self.upstreams.pick(p.route, tried)
                if step.recording:
                    _route_attrs(step, self.upstreams, replica, tried)
            if replica is None:
                if failure is not None:  # nowhere else to go: the first failure, as it was
                    raise upstream_error(failure, streaming=final.stream)
                raise unavailable(self.upstreams.serving())
            p.replica = replica.name
            reason = "failover" if tried else "first"
            with replica.lease(), p.trace.attempt(replica.name, len(tried) + 1, reason) as at:
                try:
                    response = await replica.pool.request(
                        "POST", call.path, final.body, at.forward(headers), timeout
                    )
                except httpx.TransportError as exc:
                    at.error(exc)
                    self.metrics.upstream_errors.labels(type(exc).__name__).inc()
                    if isinstance(exc, httpx.ReadTimeout) or tried:
                        replica.monitor.poke()
                        raise upstream_error(exc, streaming=final.stream) from None
                    replica.monitor.mark_down()  # refused or lost before answering: fail over
                    tried, failure = (replica,), exc
                    continue
                at.set("http.response.status_code", response.status_code)
                if response.status_code == 503 and not tried:
                    other = self.upstreams.pick(p.route, (replica,))
                    if other is not None:  # the engine refused before starting: fail over
                        at.error("EngineUnavailable: 503")
                        response.close()
                        self.metrics.upstream_errors.labels("EngineUnavailable").inc()
                        replica.monitor.mark_down()
                        tried = (replica,)
                        continue
                try:
                    return await self._answer(call, final, sink, replica, response)
                finally:
                    response.close()

    async def _answer(
        self, call: Call, final: Final, sink: Sink, replica: Replica, response: EngineResponse
    ) -> int:
        if response.status_code == 200 and final.stream:
            return await self._relay(call, response, sink, replica)
        try:
            data = await response.aread()
        except httpx.HTTPError as exc:
            raise self._upstream_failed(exc, final.stream, replica) from None
        status = response.status_code
        if sink.started:  # only streams start early; the engine refused after all
            await sink.fail(OpenAIError(status, engine_message(data), code="engine_error"))
            return status
        if status != 200:  # the engine refused: its message, in OpenAI's shape
            await sink.reply(status, reshape_engine_error(status, data), b"application/json")
            return status
        ctype = response.headers.get(b"content-type", b"application/json")
        p = call.progress
        p.usage_tail = data
        found = APIS[call.kind].stream.usage.findall(data)
        p.completion_tokens = int(found[-1]) if found else None
        await sink.reply(status, data, ctype)
        return status

    async def _relay(
        self, call: Call, response: EngineResponse, sink: Sink, replica: Replica
    ) -> int:
        await sink.open()
        p = call.progress
        stats = StreamStats(APIS[call.kind].stream, p.strip_usage)
        relay_from = time.perf_counter()
        broke: Exception | None = None
        try:
            await relay_sse(response, sink.chunk, stats, self.resume.events(call))
        except (httpx.HTTPError, EngineErrorEvent) as exc:
            broke = exc
        finally:
            if stats.first_chunk_at is not None:
                p.ttft_s = stats.first_chunk_at - call.started_at
                self.metrics.ttft.labels(call.kind).observe(p.ttft_s)
            p.completion_tokens = stats.completion_tokens()
            p.usage_tail = stats.tail
            self.metrics.tokens_streamed.inc(p.completion_tokens)
            if p.trace.recording:
                p.trace.relayed(time.perf_counter() - relay_from, _relay_attrs(p, stats))
        if broke is None and stats.done:
            await sink.end()
            return 200
        return await self.resume.broken(call, sink, replica, broke)  # continued, or its end

    def _upstream_failed(
        self, exc: httpx.HTTPError, streaming: bool, replica: Replica
    ) -> OpenAIError:
        self.metrics.upstream_errors.labels(type(exc).__name__).inc()
        replica.monitor.poke()
        return upstream_error(exc, streaming=streaming)


def _route_attrs(
    step: Step, upstreams: Upstreams, chosen: Replica | None, tried: tuple[Replica, ...]
) -> None:
    """The routing span's attributes (only when the trace records: they build lists)."""
    step.set("gateway.routing.candidates",
             [r.name for r in upstreams.replicas if r.routable and r not in tried])  # fmt: skip
    step.set("gateway.routing.excluded", [r.name for r in tried])
    step.set("gateway.replica", chosen.name if chosen is not None else "")


def _relay_attrs(p: Progress, stats: StreamStats) -> dict[str, Attr]:
    """The relay span's attributes: what the relay counted anyway, read once at the end."""
    attrs: dict[str, Attr] = {
        "gateway.relay.chunks": stats.events,
        "gateway.relay.completion_tokens": p.completion_tokens or 0,
        "gateway.relay.outcome": "done" if stats.done else "ended early",
    }
    if p.ttft_s is not None:
        attrs["gateway.ttft_s"] = p.ttft_s
    return attrs


def _used(call: Call) -> Used | None:
    """What a request the engine answered used, from the engine's usage (None: it never
    answered); the prompt becomes the engine's own count where it reported one."""
    p = call.progress
    if p.phase != "upstream" or p.completion_tokens is None:
        return None
    prompt, cached = usage_of(call.kind, p.usage_tail)
    if prompt is not None:
        p.prompt_tokens = prompt
    return Used(p.prompt_tokens or 0, cached, p.completion_tokens)
