"""Run one cell's load in this process, or across several client processes above a threshold.

One Python process tops out around 1,000 concurrent streams (seen in real runs on this
project's machines): above ``per_process`` streams the load is split into processes that each
run ``bench.client`` with a share of the concurrency and of the request indices. They start together (a barrier),
stamp with the same monotonic clock, and send their records back for the parent to merge, so
the metrics are computed exactly as for a single process.

Ctrl-C: the parent catches it and sets a shared stop flag; workers (which ignore SIGINT) cancel
their in-flight requests and return what finished, so an interrupted cell keeps its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench.client import LoadResult, Target, chunks, run_load
from bench.prompts import PromptSet
from bench.records import RequestRecord


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (less client overhead per chunk), else the stdlib loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with the gateway extra
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_on_new_loop(*args: Any, **kwargs: Any) -> LoadResult:
    """``run_load(*args, **kwargs)`` to completion on a fresh (uv)loop in this thread."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(run_load(*args, **kwargs))


@dataclass
class CellLoad:
    """Records of a cell's measured requests plus client-side facts."""

    records: list[RequestRecord] = field(default_factory=list)
    processes: int = 1
    loop_lag_ms_p99: float = 0.0
    loop_lag_ms_max: float = 0.0
    interrupted: bool = False


def run_local(
    target: Target,
    prompts: PromptSet,
    indices: range,
    concurrency: int,
    max_tokens: int,
    on_done: Callable[[RequestRecord], None] | None = None,
    **kwargs: Any,
) -> CellLoad:
    """The load in this process; Ctrl-C keeps the finished records and marks it interrupted."""
    out = CellLoad()
    try:
        res = run_on_new_loop(
            target, prompts, indices, concurrency, max_tokens, out.records, on_done, **kwargs
        )
        out.loop_lag_ms_p99, out.loop_lag_ms_max = res.loop_lag_ms_p99, res.loop_lag_ms_max
        out.interrupted = res.interrupted
    except KeyboardInterrupt:
        out.interrupted = True
    return out


# --- worker processes -------------------------------------------------------------------------

_COUNTER: Any = None
_STOP: Any = None
_BARRIER: Any = None


def _init_worker(counter: Any, stop: Any, barrier: Any) -> None:
    global _COUNTER, _STOP, _BARRIER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _COUNTER, _STOP, _BARRIER = counter, stop, barrier


def _count(_: RequestRecord) -> None:
    with _COUNTER.get_lock():
        _COUNTER.value += 1


def _worker(
    target: Target,
    prompts: PromptSet,
    indices: range,
    concurrency: int,
    max_tokens: int,
    chunk_lag: bool,
    ramp: tuple[float, int, int],
) -> tuple[list[RequestRecord], LoadResult]:
    _BARRIER.wait(timeout=120)
    records: list[RequestRecord] = []
    res = run_on_new_loop(
        target, prompts, indices, concurrency, max_tokens, records, _count,
        should_stop=_STOP.is_set, chunk_lag=chunk_lag, ramp_s=ramp[0], ramp_slots=ramp[1:],
    )  # fmt: skip
    return records, res


def shard_plan(concurrency: int, processes: int) -> list[tuple[int, int]]:
    """Per client process: (its streams, the ramp slot of its first stream).

    Streams are split as evenly as possible, the first processes taking the remainder; the
    slots number the cell's streams 0..c-1 across processes, so one ramp spans them all.
    """
    conc = [
        concurrency // processes + (1 if k < concurrency % processes else 0)
        for k in range(processes)
    ]
    return [(c, sum(conc[:k])) for k, c in enumerate(conc)]


def run_sharded(
    target: Target,
    prompts: PromptSet,
    indices: range,
    concurrency: int,
    max_tokens: int,
    processes: int,
    on_progress: Callable[[int], None] | None = None,
    chunk_lag: bool = False,
    ramp_s: float = 0.0,
) -> CellLoad:
    """The load split over ``processes`` client processes; ``on_progress(n_done)`` is polled."""
    ctx = mp.get_context("spawn")
    counter, stop, barrier = ctx.Value("i", 0), ctx.Event(), ctx.Barrier(processes)
    plan = shard_plan(concurrency, processes)
    out = CellLoad(processes=processes)
    with ProcessPoolExecutor(
        processes, mp_context=ctx, initializer=_init_worker, initargs=(counter, stop, barrier)
    ) as pool:
        futures = [
            pool.submit(
                _worker,
                target,
                prompts,
                part,
                c,
                max_tokens,
                chunk_lag,
                (ramp_s, first, concurrency),
            )
            for part, (c, first) in zip(chunks(indices, processes), plan, strict=True)
        ]
        try:
            while not all(f.done() for f in futures):
                time.sleep(0.2)
                if on_progress is not None:
                    on_progress(counter.value)
        except KeyboardInterrupt:
            out.interrupted = True
            stop.set()
        for f in futures:
            with contextlib.suppress(Exception):
                records, res = f.result(timeout=target.timeout_s + 30)
                out.records.extend(records)
                out.loop_lag_ms_p99 = max(out.loop_lag_ms_p99, res.loop_lag_ms_p99)
                out.loop_lag_ms_max = max(out.loop_lag_ms_max, res.loop_lag_ms_max)
                out.interrupted |= res.interrupted
    return out


def run_cell_load(
    target: Target,
    prompts: PromptSet,
    indices: range,
    concurrency: int,
    max_tokens: int,
    per_process: int = 512,
    on_progress: Callable[[int], None] | None = None,
    chunk_lag: bool = False,
    ramp_s: float = 0.0,
) -> CellLoad:
    """In this process up to ``per_process`` streams, else ceil(concurrency / per_process)."""
    processes = max(1, math.ceil(concurrency / max(1, per_process)))
    if processes == 1:
        done = 0

        def tick(_: RequestRecord) -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(done)

        return run_local(
            target, prompts, indices, concurrency, max_tokens, tick, chunk_lag=chunk_lag,
            ramp_s=ramp_s,
        )  # fmt: skip
    return run_sharded(
        target, prompts, indices, concurrency, max_tokens, processes, on_progress, chunk_lag,
        ramp_s,
    )  # fmt: skip
