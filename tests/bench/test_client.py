"""The streaming client against the synthetic upstream: timings, usage and every failure kind."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bench.client import Target, chunks, make_client, stream_one
from bench.metrics import summarize
from bench.prompts import Calibration, PromptSet
from bench.records import RequestRecord
from bench.shards import run_cell_load

PROMPTS = PromptSet(Calibration("chat", ("alpha", "beta"), 8), 12)


def one(url: str, fault: dict | None = None, timeout: float = 10.0, api="chat") -> RequestRecord:
    target = Target(
        url,
        "synthetic",
        api=api,
        timeout_s=timeout,
        extra_body={"synthetic": fault} if fault else {},
    )

    async def go() -> RequestRecord:
        async with make_client(target, 1) as client:
            rec = RequestRecord(arrival=0.0, start=0.0, prompt_tokens=12)
            return await stream_one(client, target, target.payload("x y", 5), rec, True)

    return asyncio.run(go())


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_a_clean_stream(synthetic, api):
    rec = one(synthetic, api=api)
    assert rec.ok, rec.error
    assert rec.usage_seen and rec.output_tokens == 5
    # one gap per token after the first; a loaded machine may deliver two chunks in one read,
    # so a gap can be ~0 but never negative
    assert len(rec.itl) == 4 and all(g >= 0 for g in rec.itl)
    assert rec.ttft is not None and 0 < rec.ttft < rec.e2el <= rec.finish - rec.start
    assert len(rec.chunk_lag) == 5 and all(lag >= 0 for lag in rec.chunk_lag)


def test_crlf_line_ends_parse_the_same(synthetic):
    rec = one(synthetic, {"crlf": True})
    assert rec.ok and len(rec.itl) == 4


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"error_after": 2}, "stream error event: synthetic failure"),
        ({"drop_after": 2}, ""),
        ({"no_done": True}, "before [DONE]"),
    ],
)
def test_failures_are_errors(synthetic, fault, message):
    rec = one(synthetic, fault)
    assert rec.outcome == "error" and message in rec.error


def test_timeouts_are_counted_apart(synthetic):
    target = Target(synthetic, "synthetic", timeout_s=0.05)

    async def go() -> RequestRecord:
        async with make_client(target, 1) as client:
            rec = RequestRecord(arrival=0.0, start=0.0)
            return await stream_one(client, target, target.payload("x", 500), rec)

    rec = asyncio.run(go())
    assert rec.outcome == "timeout"
    assert summarize([rec])["timeouts"] == 1


def test_unreachable_server_is_an_error():
    rec = one("http://127.0.0.1:9")
    assert rec.outcome == "error" and "ConnectError" in rec.error


def test_load_keeps_the_concurrency(synthetic):
    load = run_cell_load(Target(synthetic, "synthetic"), PROMPTS, range(48), 8, 10)
    m = summarize(load.records)
    assert m["completed"] == 48 and m["output_tokens"] == 480
    assert m["peak_concurrency"] == 8
    assert m["queue_ms_p99"] > 0  # later requests waited for a slot


def test_several_client_processes(synthetic):
    load = run_cell_load(Target(synthetic, "synthetic"), PROMPTS, range(24), 6, 4, per_process=3)
    assert load.processes == 2
    assert sorted(r.ok for r in load.records) == [True] * 24
    assert summarize(load.records)["peak_concurrency"] <= 6


@pytest.mark.parametrize("per_process", [512, 2])
def test_ramp_delays_each_stream_by_its_slot(synthetic, per_process):
    """With ``ramp_s`` stream k of c sends its first request ``ramp_s * k / c`` after the start.

    The schedule for 0.6 s over 4 streams is 0, 0.15, 0.30, 0.45 s (in one process, or as slots
    0-1 and 2-3 of two processes). A stream never starts before its slot (asyncio sleeps at
    least that long), so the k-th earliest start is at least slot k after the arrival; lateness
    on a busy machine only adds. 300 tokens at 2 ms: each request outlasts the ramp, so every
    stream's first request is one of the 4."""
    load = run_cell_load(
        Target(synthetic, "synthetic"), PROMPTS, range(4), 4, 300, per_process=per_process,
        ramp_s=0.6,
    )  # fmt: skip
    assert all(r.ok for r in load.records) and len(load.records) == 4
    offsets = sorted(r.start - r.arrival for r in load.records)
    schedule = [0.0, 0.15, 0.30, 0.45]
    tick = 0.002  # the event loop's timer granularity (uvloop: 1 ms)
    assert all(o >= s - tick for o, s in zip(offsets, schedule, strict=True)), offsets


def test_chunks_split_evenly():
    assert chunks(range(10), 3) == [range(0, 3), range(3, 6), range(6, 10)]


def test_payload_asks_for_exact_lengths():
    import json

    body = json.loads(Target("http://x", "m").payload("hi", 7))
    assert body["max_tokens"] == 7 and body["ignore_eos"] is True and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and body["temperature"] == 0.0
    assert httpx.URL(Target("http://x/", "m", api="completions").url).path == "/v1/completions"
