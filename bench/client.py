"""The async streaming load client: closed-loop, ``concurrency`` requests in flight.

Why it is built this way:
- httpx with a connection pool sized to the concurrency, so the pool never queues requests;
  raw byte iteration (no line buffer to overflow: aiohttp's 64 KiB default collapses
  long-context runs, vllm #39963) and ``Accept-Encoding: identity``.
- ``concurrency`` long-lived worker coroutines pull request indices from a shared counter;
  no task per request, so 10,000-request cells cost nothing to schedule. All requests of a
  cell are due at its start (``vllm bench serve --request-rate inf --max-concurrency N``):
  the wait for a free worker is the client-side queue time, reported apart from TTFT.
- One SSE event is timestamped when its bytes are parsed, as vLLM does; JSON is decoded only to
  tell token chunks (``choices``) from the usage chunk and from error events.
- A loop-lag monitor measures how late the event loop wakes up: a lagging loop means the
  client itself inflates latencies. Together with the observed concurrency
  (``bench.metrics.concurrency_profile``) it says when the client was the bottleneck.
- Records of finished requests go into a caller-owned list, so Ctrl-C keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np

from bench.prompts import PromptSet
from bench.records import RequestRecord

Api = Literal["chat", "completions"]


@dataclass(frozen=True)
class Target:
    """Where and how to send requests."""

    base_url: str
    model: str
    api: Api = "chat"
    api_key: str | None = None
    timeout_s: float = 600.0  # total per request
    connect_timeout_s: float = 10.0
    temperature: float = 0.0
    ignore_eos: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        path = "/v1/chat/completions" if self.api == "chat" else "/v1/completions"
        return self.base_url.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def payload(self, text: str, max_tokens: int) -> bytes:
        """A streamed request asking for exactly ``max_tokens`` tokens (ignore_eos)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        body.update(self.extra_body)
        return json.dumps(body).encode()


@dataclass
class LoadResult:
    """Client-side facts about a load run beyond the per-request records."""

    loop_lag_ms_p99: float = 0.0
    loop_lag_ms_max: float = 0.0
    interrupted: bool = False


class _Parser:
    """Incremental SSE parser filling one ``RequestRecord``."""

    __slots__ = ("buf", "done", "error", "lag", "rec")

    def __init__(self, rec: RequestRecord, lag: bool) -> None:
        self.rec = rec
        self.buf = b""
        self.done = False
        self.error = ""
        self.lag = lag

    def feed(self, data: bytes) -> None:
        buf = self.buf + data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        while (cut := buf.find(b"\n\n")) >= 0:
            event, buf = buf[:cut], buf[cut + 2 :]
            now = time.perf_counter()
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip(), now)
        self.buf = buf

    def _data(self, data: bytes, now: float) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        obj = json.loads(data)
        rec = self.rec
        if obj.get("choices"):
            if rec.last_token is None:
                rec.first_token = now
            else:
                rec.itl.append(now - rec.last_token)
            rec.last_token = now
            if self.lag and (stamp := obj.get("t")) is not None:
                rec.chunk_lag.append(now - stamp)
        elif err := obj.get("error"):
            self.error = str(err.get("message", err) if isinstance(err, dict) else err)
        if usage := obj.get("usage"):
            rec.usage_seen = True
            rec.output_tokens = int(usage.get("completion_tokens") or 0)
            if (pt := usage.get("prompt_tokens")) is not None:
                rec.prompt_tokens = int(pt)


async def stream_one(
    client: httpx.AsyncClient,
    target: Target,
    body: bytes,
    rec: RequestRecord,
    chunk_lag: bool = False,
) -> RequestRecord:
    """Send one request and record it; never raises for HTTP or protocol failures."""
    parser = _Parser(rec, chunk_lag)
    rec.start = time.perf_counter()
    try:
        async with asyncio.timeout(target.timeout_s):
            async with client.stream("POST", target.url, content=body) as resp:
                rec.status = resp.status_code
                if resp.status_code != 200:
                    text = (await resp.aread())[:300].decode(errors="replace")
                    rec.error = f"HTTP {resp.status_code}: {text}"
                else:
                    async for data in resp.aiter_raw():
                        parser.feed(data)
                    if parser.error:
                        rec.error = f"stream error event: {parser.error}"
                    elif not parser.done:
                        rec.error = "stream ended before [DONE]"
                    elif rec.first_token is None:
                        rec.error = "no chunk carried choices"
                    else:
                        rec.outcome = "ok"
    except (TimeoutError, httpx.TimeoutException) as exc:
        rec.outcome = "timeout"
        rec.error = f"timeout: {type(exc).__name__}"
    except (httpx.HTTPError, ValueError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:300]
    rec.finish = time.perf_counter()
    return rec


# httpcore's pool scans every connection on each request (O(pool size) per request, so
# O(concurrency^2) per round): one pool of 256 connections costs seconds of CPU per cell and
# stalls the event loop. Small pools, one per group of workers, keep that cost flat.
POOL_SIZE = 8
_SSL = None


def make_client(target: Target, concurrency: int) -> httpx.AsyncClient:
    """A client whose pool holds ``concurrency`` connections, so the pool never queues."""
    global _SSL
    if _SSL is None:  # loading CA certificates per client would cost ~10 ms each
        _SSL = httpx.create_ssl_context()
    size = max(1, concurrency)
    return httpx.AsyncClient(
        headers=target.headers(),
        limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
        timeout=httpx.Timeout(target.timeout_s, connect=target.connect_timeout_s),
        verify=_SSL,
        trust_env=False,
    )


async def _loop_lag(samples: list[float], period: float = 0.05) -> None:
    while True:
        t = time.perf_counter()
        await asyncio.sleep(period)
        samples.append(time.perf_counter() - t - period)


async def run_load(
    target: Target,
    prompts: PromptSet,
    indices: range,
    concurrency: int,
    max_tokens: int,
    sink: list[RequestRecord],
    on_done: Callable[[RequestRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    start_at: float | None = None,
    chunk_lag: bool = False,
    client: httpx.AsyncClient | None = None,
    ramp_s: float = 0.0,
    ramp_slots: tuple[int, int] | None = None,
) -> LoadResult:
    """Run ``indices`` through ``concurrency`` workers, appending records to ``sink``.

    ``start_at``: a ``perf_counter`` deadline to begin at (aligns several client processes).
    ``ramp_s``: worker k sends its first request ``ramp_s * k / concurrency`` s after the start
    instead of all at once (0: a burst). A closed loop keeps its workers in the phase they
    started in, so a burst start means every later round arrives as a burst too.
    ``ramp_slots`` (first, total): these workers are slots ``first..`` of ``total`` spread over
    the ramp (several client processes share one ramp).
    ``should_stop``: polled by the loop-lag monitor; when true the run is cancelled and what
    finished so far stays in ``sink``.
    """
    workers_n = max(1, concurrency)
    own = client is None
    clients = (
        [client]
        if client is not None
        else [
            make_client(target, min(POOL_SIZE, workers_n - k))
            for k in range(0, workers_n, POOL_SIZE)
        ]
    )
    counter = iter(indices)
    lags: list[float] = []
    result = LoadResult()
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    arrival = time.perf_counter()

    async def worker(client: httpx.AsyncClient, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        for i in counter:
            body = target.payload(prompts.text(i), max_tokens)
            rec = RequestRecord(arrival=arrival, start=0.0, prompt_tokens=prompts.tokens)
            await stream_one(client, target, body, rec, chunk_lag)
            sink.append(rec)
            if on_done is not None:
                on_done(rec)

    first, total = ramp_slots or (0, workers_n)
    monitor = asyncio.ensure_future(_loop_lag(lags))
    workers = [
        asyncio.ensure_future(
            worker(clients[(k // POOL_SIZE) % len(clients)], ramp_s * (first + k) / total)
        )
        for k in range(workers_n)
    ]
    everything = asyncio.gather(*workers)
    try:
        while not everything.done():
            await asyncio.wait([everything], timeout=0.1)
            if should_stop is not None and should_stop():
                result.interrupted = True
                everything.cancel()
                break
        with contextlib.suppress(asyncio.CancelledError):
            await everything
    except asyncio.CancelledError:
        result.interrupted = True
        everything.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everything
        raise
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        if own:
            for c in clients:
                await c.aclose()
        if lags:
            result.loop_lag_ms_p99 = float(np.percentile(lags, 99)) * 1000.0
            result.loop_lag_ms_max = max(lags) * 1000.0
    return result


def chunks(indices: range, parts: int) -> list[range]:
    """Split a range of request indices into ``parts`` contiguous, near-equal ranges."""
    n = len(indices)
    bounds = [indices.start + (n * k) // parts for k in range(parts + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]
