"""``python -m bench gateway --resume``: what resuming streams costs, and the gap at a switch.

Two synthetic upstreams (``bench.synthetic``) behind two gateways that differ only in
``GATEWAY_RESUME`` (on, off), started here; two replicas, so that resume is active on the first.

- **CPU per streamed chunk**, resume on vs off: the same closed-loop load (``--concurrency``
  streams of ``--tokens`` tokens) through each gateway in turn, ``--rounds`` times, the order
  flipped every round; gateway CPU (psutil, its idle polling subtracted) per 1,000 streamed
  chunks. With resume on the gateway asks the engine for token ids (bigger chunks), keeps each
  piece in the transcript and puts the ids back to null; the pieces are parsed only at a break.
  Target (issue 24): on <= off + 5 %.
- **The switch gap**: ``--gap-streams`` streams through the resume-on gateway whose replica closes
  the connection right after chunk ``--cut-after`` (``synthetic: {"cut_after": k}``, a replica
  killed after a chunk); each must end with ``[DONE]``, all its chunks, no error. The gap is what
  the client sees: the time from the dead replica's last chunk to the continuation's first. It
  holds the continuation's TTFT (``--ttft-ms``; a prefill of prompt + generated tokens on an
  engine), one inter-token delay (the continuation repeats the last token, see
  ``gateway/resume/continuation.py``), and the gateway's own part. Target: p50 <= TTFT + 50 ms,
  with the TTFT the synthetic's for that prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.client import Target
from bench.gatewayproc import mark_all_warm, run_gateway
from bench.metrics import summarize
from bench.overhead import ProcWatch, _pin, pin_plan, synthetic_upstream
from bench.prompts import Calibration, PromptSet
from bench.shards import run_cell_load
from env.settings import DEFAULT_PROFILE, EngineSettings

TARGET_CPU_RATIO = 1.05
TARGET_GAP_SLACK_MS = 50.0


@contextlib.contextmanager
def gateways(urls: list[str], max_conc: int, profile: str | None) -> Iterator[dict]:
    """The two gateways in front of the same upstreams: {"on": (url, pid), "off": ...}."""
    common = {
        "GATEWAY_UPSTREAM_URLS": ",".join(urls),
        "GATEWAY_ROUTING": "least_loaded",
        "GATEWAY_MAX_INFLIGHT": str(max(2 * max_conc, 64)),
        "GATEWAY_QUEUE_DEPTH": str(max(2 * max_conc, 256)),
        "GATEWAY_LOG_FORMAT": "off",
    }
    with contextlib.ExitStack() as stack:
        out = {}
        for mode in ("on", "off"):
            env = {**common, "GATEWAY_RESUME": mode}
            gw = stack.enter_context(
                run_gateway(urls[0], env=env, profile=profile or DEFAULT_PROFILE)
            )
            mark_all_warm(gw)
            out[mode] = (gw.url, gw.pid)
        yield out


def cpu_per_chunk(
    args: argparse.Namespace, gws: dict, model: str, console: Console
) -> list[dict[str, object]]:
    prompts = PromptSet(Calibration("chat", ("hello", "world", "token"), 0), args.prompt_words)
    watches = {mode: ProcWatch(pid) for mode, (_, pid) in gws.items()}
    idle = {}
    for mode, w in watches.items():  # the monitors' polling, subtracted
        c0, t0 = w.cpu_seconds(), time.perf_counter()
        time.sleep(args.idle_s)
        idle[mode] = (w.cpu_seconds() - c0) / (time.perf_counter() - t0)
    rows = []
    for conc in args.concurrency:
        n = max(args.min_requests, conc * args.requests_per_stream)
        cpu = {"on": 0.0, "off": 0.0}
        chunks = {"on": 0, "off": 0}
        errors = {"on": 0, "off": 0}
        for rnd in range(args.rounds):
            for mode in ("on", "off") if rnd % 2 == 0 else ("off", "on"):
                target = Target(gws[mode][0], model, api="chat", timeout_s=args.timeout)
                if rnd == 0:  # warm connections and code paths: not measured
                    run_cell_load(target, prompts, range(min(n, conc)), conc, args.tokens)
                c0 = watches[mode].cpu_seconds()
                load = run_cell_load(target, prompts, range(n), conc, args.tokens,
                                     per_process=args.streams_per_process, ramp_s=args.ramp_s)  # fmt: skip
                c1 = watches[mode].cpu_seconds()
                m = summarize(load.records)
                cpu[mode] += max(0.0, c1 - c0 - idle[mode] * m["duration_s"])
                chunks[mode] += m["output_tokens"]  # one chunk per token (synthetic upstream)
                errors[mode] += m["errors"] + m["timeouts"]
                console.print(f"  c={conc:<4} round {rnd + 1} resume {mode:<3}: "
                              f"{m['output_throughput']:>9.0f} tok/s, {c1 - c0:.3f} CPU s")  # fmt: skip
        per = {k: cpu[k] / chunks[k] * 1e6 if chunks[k] else None for k in cpu}  # us per chunk
        rows.append({
            "concurrency": conc, "chunks_per_side": chunks["on"],
            "cpu_us_per_chunk_on": per["on"], "cpu_us_per_chunk_off": per["off"],
            "ratio": per["on"] / per["off"] if per["on"] and per["off"] else None,
            "errors_on": errors["on"], "errors_off": errors["off"],
        })  # fmt: skip
    return rows


def switch_gap(args: argparse.Namespace, url: str, model: str) -> dict[str, object]:
    prompts = PromptSet(Calibration("chat", ("hello", "world", "token"), 0), args.prompt_words)
    target = Target(url, model, api="chat", timeout_s=args.timeout,
                    extra_body={"synthetic": {"cut_after": args.cut_after}})  # fmt: skip
    load = run_cell_load(target, prompts, range(args.gap_streams), args.gap_concurrency,
                         args.tokens)  # fmt: skip
    k = args.cut_after
    gaps = [r.itl[k - 1] * 1000 for r in load.records if r.ok and len(r.itl) >= k]
    whole = [r for r in load.records if r.ok and r.output_tokens == args.tokens
             and len(r.itl) == args.tokens - 1]  # fmt: skip
    steady = [x * 1000 for r in load.records if r.ok for i, x in enumerate(r.itl) if i != k - 1]
    p50 = float(np.percentile(gaps, 50)) if gaps else None
    return {
        "streams": args.gap_streams,
        "complete": len(whole),  # [DONE], every chunk, usage = tokens
        "failed": sum(1 for r in load.records if not r.ok),
        "gap_ms_p50": p50,
        "gap_ms_p90": float(np.percentile(gaps, 90)) if gaps else None,
        "gap_ms_max": max(gaps) if gaps else None,
        "itl_ms_p50": float(np.percentile(steady, 50)) if steady else None,
        "ttft_ms": args.ttft_ms,
        "target_ms": args.ttft_ms + TARGET_GAP_SLACK_MS,
        "pass": p50 is not None and p50 <= args.ttft_ms + TARGET_GAP_SLACK_MS,
    }


def fmt(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def cmd_resume(args: argparse.Namespace) -> int:
    console = Console(width=160)
    model = args.model or EngineSettings.load(args.profile).served_model_name
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(synthetic_upstream(model, args.itl_ms, args.ttft_ms))
               for _ in range(2)]  # fmt: skip
        gws = stack.enter_context(gateways([u for u, _ in ups], max(args.concurrency),
                                           args.profile))  # fmt: skip
        plan = pin_plan(os.sched_getaffinity(0)) if args.pin else None
        if plan:  # both gateways on the last CPU (they take turns), everything else elsewhere
            for _, pid in gws.values():
                _pin(pid, plan[0])
            os.sched_setaffinity(0, plan[1])
            for _, pid in ups:
                _pin(pid, plan[1])
        if args.ramp_s is None:
            args.ramp_s = (args.ttft_ms + args.tokens * args.itl_ms) / 1e3
        started = dt.datetime.now().isoformat(timespec="seconds")
        console.print(f"resume on {gws['on'][0]}, off {gws['off'][0]}; 2 synthetic upstreams, "
                      f"{args.tokens} tokens at {args.itl_ms:g} ms, TTFT {args.ttft_ms:g} ms")  # fmt: skip
        rows = cpu_per_chunk(args, gws, model, console)
        gap = switch_gap(args, gws["on"][0], model)
    table = Table(title="gateway CPU per streamed chunk, resume on vs off (synthetic upstream)")
    for col in ("streams", "chunks", "on us/chunk", "off us/chunk", "on / off", "errors on/off"):
        table.add_column(col, justify="right")
    md = [
        "| streams | chunks | on us/chunk | off us/chunk | on / off |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vals = [str(r["concurrency"]), str(r["chunks_per_side"]),
                fmt(r["cpu_us_per_chunk_on"], ".2f"), fmt(r["cpu_us_per_chunk_off"], ".2f"),
                fmt(r["ratio"], ".3f")]  # fmt: skip
        table.add_row(*vals, f"{r['errors_on']}/{r['errors_off']}")
        md.append("| " + " | ".join(vals) + " |")
    console.print(table)
    worst = max((r["ratio"] for r in rows if r["ratio"] is not None), default=None)
    verdict = (f"CPU per chunk, resume on / off: worst {fmt(worst, '.3f')} (<= "
               f"{TARGET_CPU_RATIO}: {'PASS' if worst and worst <= TARGET_CPU_RATIO else 'MISS'})")  # fmt: skip
    gap_line = (
        f"switch gap ({gap['streams']} streams cut after chunk {args.cut_after}, "
        f"{gap['complete']} complete, {gap['failed']} failed): p50 {fmt(gap['gap_ms_p50'], '.1f')} "
        f"ms, p90 {fmt(gap['gap_ms_p90'], '.1f')} ms, max {fmt(gap['gap_ms_max'], '.1f')} ms; "
        f"steady inter-chunk p50 {fmt(gap['itl_ms_p50'], '.1f')} ms; target p50 <= TTFT "
        f"{args.ttft_ms:g} + {TARGET_GAP_SLACK_MS:g} ms: {'PASS' if gap['pass'] else 'MISS'}"
    )
    console.print(verdict)
    console.print(gap_line)
    meta = {"started": started, "host": platform.node(), "cpus": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(), "pinned": bool(plan),
            "command": " ".join(["python", "-m", "bench", *sys.argv[1:]])}  # fmt: skip
    console.print(f"load average at the end: {meta['load_avg_at_end']} on {meta['cpus']} CPUs")
    out = args.out or Path("results/bench-resume") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "gap": gap},
                                                 indent=1) + "\n")  # fmt: skip
    (out / "results.md").write_text("\n".join(md) + f"\n\n{verdict}\n\n{gap_line}\n\n"
                                    f"`{meta['command']}` on `{meta['host']}`, {started}\n")  # fmt: skip
    console.print(f"results: {out}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="resume on vs off: CPU per streamed chunk and the switch gap "
                        "(bench/resume.py); uses --concurrency --tokens --itl-ms --ttft-ms "
                        "--rounds --pin")  # fmt: skip
    p.add_argument("--cut-after", type=int, default=16,
                   help="--resume: the replica dies right after this chunk")  # fmt: skip
    p.add_argument("--gap-streams", type=int, default=64, help="--resume: cut streams")
    p.add_argument("--gap-concurrency", type=int, default=16, help="--resume: at once")
    p.set_defaults(resume_run=cmd_resume)
