"""``python -m bench gateway``: what the gateway adds, measured against its own upstream.

The same load (closed loop, ``c`` streams) goes alternately through the gateway and directly to
the gateway's upstream, ``--rounds`` times per concurrency with the order flipped every round,
so drift on a shared machine hits both sides alike. Per concurrency it reports:

- throughput ratio: output tok/s through the gateway / direct (pooled over rounds);
- added TTFT p50 and p99: gateway percentile - direct percentile (all requests pooled);
- added per-chunk latency p50/p99: every token chunk of the synthetic upstream carries its
  emission time on the machine's monotonic clock, so the client measures each chunk's delivery
  lag; gateway lag percentile - direct lag percentile is what the relay adds per chunk;
- gateway CPU seconds per 1,000 streamed tokens (psutil on the gateway process and children);
- gateway peak RSS (VmHWM, the kernel's high-water mark).

Upstreams: by default a synthetic SSE server (``bench.synthetic``) started here, so the gateway,
not an engine, is what is measured; ``--upstream-url`` points at a real engine instead (no
per-chunk stamps then). By default the gateway is started here (``python -m gateway`` through
``bench.gatewayproc.run_gateway``, warm-up marked passed through its real handshake, the
admission cap raised above the tested concurrency); ``--gateway-url`` measures one already
running (``--gateway-pid`` for its CPU and memory).

Arrivals: by default each stream's first request is delayed by ``k / c`` of one synthetic
response time (``--ramp-s``), so the c streams arrive spread out as steady traffic does. With
``--ramp-s 0`` all c start at once, and a closed loop keeps them in that phase: every round is a
burst of c simultaneous arrivals, which measures how long the gateway takes to admit a burst
(c x its per-request CPU) rather than what it adds to one request.

Targets (issue 7) at 256 streams on the synthetic upstream: throughput >= 0.97x direct, added
TTFT p50 <= 1 ms, p99 <= 5 ms. Printed with the verdict, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from bench.client import Target
from bench.gatewayproc import mark_warm, run_gateway
from bench.grid import int_list
from bench.metrics import summarize
from bench.prompts import Calibration, PromptSet
from bench.records import RequestRecord
from bench.shards import run_cell_load
from env.settings import DEFAULT_PROFILE, EngineSettings

TARGET_CONCURRENCY = 256
TARGET_RATIO = 0.97
TARGET_TTFT_P50_MS = 1.0
TARGET_TTFT_P99_MS = 5.0


@contextlib.contextmanager
def synthetic_upstream(model: str, itl_ms: float, ttft_ms: float) -> Iterator[tuple[str, int]]:
    """Start ``python -m bench synthetic`` in its own process group; yields (url, pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "synthetic", "--port", "0", "--model", model,
         "--itl-ms", str(itl_ms), "--ttft-ms", str(ttft_ms)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "http://" not in line:
            raise RuntimeError(f"synthetic upstream did not start: {line!r}")
        url = line.split()[3]
        yield url, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def started_gateway(upstream_url: str, profile: str | None, max_conc: int) -> Iterator[tuple]:
    """The real gateway in front of ``upstream_url``, marked warm; yields (url, pid)."""
    env = {
        # Admission must not be what is measured: cap and queue above the tested load.
        "GATEWAY_MAX_INFLIGHT": str(max(2 * max_conc, 64)),
        "GATEWAY_QUEUE_DEPTH": str(max(2 * max_conc, 256)),
    }
    with run_gateway(upstream_url, env=env, profile=profile or DEFAULT_PROFILE) as gw:
        mark_warm(gw)
        yield gw.url, gw.pid


class ProcWatch:
    """CPU seconds and peak RSS of a process tree (the gateway)."""

    def __init__(self, pid: int | None) -> None:
        self.proc = psutil.Process(pid) if pid else None

    def _tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        return [self.proc, *self.proc.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def peak_rss_mib(self) -> float | None:
        """Sum over the tree of VmHWM (kernel high-water mark of resident memory)."""
        if self.proc is None:
            return None
        total = 0
        for p in self._tree():
            with contextlib.suppress(OSError, psutil.Error):
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        return total / 2**20


@dataclass
class Side:
    """Everything measured for one mode (gateway or direct) at one concurrency."""

    records: list[RequestRecord] = field(default_factory=list)
    durations: float = 0.0
    tokens: int = 0
    cpu_s: float = 0.0
    loop_lag_ms_p99: float = 0.0

    def pct(self, attr: str, q: float) -> float | None:
        vals = [getattr(r, attr) for r in self.records if r.ok]
        return float(np.percentile(vals, q)) * 1000 if vals else None

    def lag(self, q: float) -> float | None:
        arrs = [np.frombuffer(r.chunk_lag, dtype=float) for r in self.records if r.ok]
        lags = np.concatenate(arrs) if arrs else np.array([])
        return float(np.percentile(lags, q)) * 1000 if lags.size else None

    @property
    def throughput(self) -> float:
        return self.tokens / self.durations if self.durations else 0.0

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if not r.ok)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def compare_row(conc: int, g: Side, d: Side, gateway_cpu_known: bool = True) -> dict:
    """One concurrency's row: the gateway side against the direct side.

    Throughput ratio = gateway tok/s / direct tok/s (each side's tokens over its summed round
    durations); "added" latencies are gateway percentile - direct percentile, in ms.
    """
    return {
        "concurrency": conc,
        "requests_per_side": len(g.records),
        "direct_tok_s": d.throughput,
        "gateway_tok_s": g.throughput,
        "throughput_ratio": g.throughput / d.throughput if d.throughput else None,
        "direct_ttft_ms_p50": d.pct("ttft", 50),
        "gateway_ttft_ms_p50": g.pct("ttft", 50),
        "added_ttft_ms_p50": _diff(g.pct("ttft", 50), d.pct("ttft", 50)),
        "direct_ttft_ms_p99": d.pct("ttft", 99),
        "gateway_ttft_ms_p99": g.pct("ttft", 99),
        "added_ttft_ms_p99": _diff(g.pct("ttft", 99), d.pct("ttft", 99)),
        "direct_chunk_lag_ms_p50": d.lag(50),
        "added_chunk_ms_p50": _diff(g.lag(50), d.lag(50)),
        "added_chunk_ms_p99": _diff(g.lag(99), d.lag(99)),
        "gateway_cpu_s_per_1k_tokens": (
            g.cpu_s / g.tokens * 1000 if gateway_cpu_known and g.tokens else None
        ),
        "gateway_peak_rss_mib": None,
        "errors_direct": d.errors,
        "errors_gateway": g.errors,
        "client_loop_lag_ms_p99": max(g.loop_lag_ms_p99, d.loop_lag_ms_p99),
    }


def measure(
    args: argparse.Namespace,
    gw_url: str,
    up_url: str,
    gw_pid: int | None,
    model: str,
    console: Console,
) -> list[dict]:
    prompts = PromptSet(Calibration("chat", ("hello", "world", "token"), 0), args.prompt_words)
    watch = ProcWatch(gw_pid)
    # The gateway polls the upstream's /metrics and /health in the background: measure that idle
    # CPU rate once and subtract it, so CPU per token is the relay's own cost.
    c0, t0 = watch.cpu_seconds(), time.perf_counter()
    time.sleep(args.idle_s)
    idle_rate = (watch.cpu_seconds() - c0) / (time.perf_counter() - t0)
    console.print(f"gateway idle CPU: {idle_rate * 1000:.1f} ms/s (subtracted)")
    rows = []
    for conc in args.concurrency:
        n = max(args.min_requests, conc * args.requests_per_stream)
        sides = {"gateway": Side(), "direct": Side()}
        for rnd in range(args.rounds):
            order = ("direct", "gateway") if rnd % 2 == 0 else ("gateway", "direct")
            for mode in order:
                url = gw_url if mode == "gateway" else up_url
                target = Target(
                    url, model, api="chat", api_key=args.api_key, timeout_s=args.timeout
                )
                if rnd == 0:  # warm connections, JIT-free paths, caches: not measured
                    run_cell_load(target, prompts, range(min(n, conc)), conc, args.tokens)
                cpu0 = watch.cpu_seconds()
                load = run_cell_load(
                    target,
                    prompts,
                    range(n),
                    conc,
                    args.tokens,
                    per_process=args.streams_per_process,
                    chunk_lag=True,
                    ramp_s=args.ramp_s,
                )
                cpu1 = watch.cpu_seconds()
                if load.interrupted:  # Ctrl-C: stop here; the context managers clean up
                    raise KeyboardInterrupt
                m = summarize(load.records)
                side = sides[mode]
                side.records += load.records
                side.durations += m["duration_s"]
                side.tokens += m["output_tokens"]
                side.loop_lag_ms_p99 = max(side.loop_lag_ms_p99, load.loop_lag_ms_p99)
                if mode == "gateway":
                    side.cpu_s += max(0.0, cpu1 - cpu0 - idle_rate * m["duration_s"])
                console.print(
                    f"  c={conc:<4} round {rnd + 1} {mode:<7}: {m['output_throughput']:>9.0f} "
                    f"tok/s TTFT p50 {m['ttft_ms_p50'] or 0:.2f} ms p99 "
                    f"{m['ttft_ms_p99'] or 0:.2f} ms errors {m['errors'] + m['timeouts']}"
                )
        rows.append(compare_row(conc, sides["gateway"], sides["direct"], bool(gw_pid)))
        rows[-1]["gateway_peak_rss_mib"] = watch.peak_rss_mib()
    return rows


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def verdict(rows: list[dict]) -> str | None:
    row = next((r for r in rows if r["concurrency"] == TARGET_CONCURRENCY), None)
    if row is None:
        return None
    checks = [
        ("throughput", row["throughput_ratio"], TARGET_RATIO, ">="),
        ("added TTFT p50 ms", row["added_ttft_ms_p50"], TARGET_TTFT_P50_MS, "<="),
        ("added TTFT p99 ms", row["added_ttft_ms_p99"], TARGET_TTFT_P99_MS, "<="),
    ]
    parts = []
    for name, value, limit, op in checks:
        ok = value is not None and (value >= limit if op == ">=" else value <= limit)
        parts.append(f"{name} {fmt(value, '.3f')} ({op} {limit}: {'PASS' if ok else 'MISS'})")
    return f"targets at {TARGET_CONCURRENCY} streams: " + "; ".join(parts)


def render(rows: list[dict], meta: dict) -> tuple[Table, str]:
    arrivals = f"starts spread over {meta['ramp_s']:g} s" if meta["ramp_s"] else "burst starts"
    table = Table(title=f"gateway vs direct ({meta['upstream']} upstream, {arrivals})")
    cols = [
        ("streams", "concurrency", "d"),
        ("direct tok/s", "direct_tok_s", ",.0f"),
        ("gw / direct", "throughput_ratio", ".3f"),
        ("+TTFT p50 ms", "added_ttft_ms_p50", ".2f"),
        ("+TTFT p99 ms", "added_ttft_ms_p99", ".2f"),
        ("+chunk p50 ms", "added_chunk_ms_p50", ".3f"),
        ("+chunk p99 ms", "added_chunk_ms_p99", ".3f"),
        ("gw CPU s/1k tok", "gateway_cpu_s_per_1k_tokens", ".4f"),
        ("gw peak RSS MiB", "gateway_peak_rss_mib", ".0f"),
        ("errors g/d", None, ""),
    ]
    for label, _, _ in cols:
        table.add_column(label, justify="right")
    md = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---:|" * len(cols)]
    for r in rows:
        vals = [
            fmt(r[k], spec) if k else f"{r['errors_gateway']}/{r['errors_direct']}"
            for _, k, spec in cols
        ]
        table.add_row(*vals)
        md.append("| " + " | ".join(vals) + " |")
    return table, "\n".join(md)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("gateway", help="gateway overhead: gateway vs direct, alternating")
    p.add_argument("--profile", help="env profile for the gateway (default cpu)")
    p.add_argument(
        "--concurrency", type=int_list, default="1,16,64,256,512", help="list or 1..512 range"
    )
    p.add_argument("--tokens", type=int, default=32, help="tokens per response")
    p.add_argument("--itl-ms", type=float, default=50.0, help="synthetic inter-token delay")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="synthetic time to first token")
    p.add_argument("--prompt-words", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests-per-stream", type=int, default=2)
    p.add_argument("--min-requests", type=int, default=8)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--streams-per-process", type=int, default=512)
    p.add_argument(
        "--ramp-s",
        type=float,
        help="spread the streams' first requests over this many seconds (default: one "
        "synthetic response time, i.e. steady arrivals; 0 with --upstream-url). 0: all at once, "
        "and a closed loop then stays in lock-step: every round is a burst of c arrivals",
    )
    p.add_argument("--upstream-url", help="a real upstream (engine) instead of the synthetic")
    p.add_argument("--gateway-url", help="measure a running gateway instead of starting one")
    p.add_argument("--gateway-pid", type=int, help="its PID, for CPU and RSS")
    p.add_argument("--model", help="model name (default: the profile's served name)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--idle-s", type=float, default=3.0, help="idle CPU baseline window")
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin the gateway to the last CPU, upstream and client to the others",
    )
    p.add_argument("--out", type=Path, help="dir for results.json and results.md")
    p.set_defaults(func=cmd_gateway)
    return p  # bench/resume.py adds --resume (its own run: resume on vs off)


def _pin(pid: int, cpus: set[int]) -> None:
    """``pid`` and its descendants onto ``cpus`` (one that exits meanwhile is skipped)."""
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            os.sched_setaffinity(p.pid, cpus)


def pin_plan(allowed: set[int]) -> tuple[set[int], set[int]] | None:
    """(the gateway's CPU, everyone else's) out of the CPUs this process may run on: the last
    allowed one for the gateway; None with a single CPU (nothing to separate)."""
    cpus = sorted(allowed)
    return ({cpus[-1]}, set(cpus[:-1])) if len(cpus) > 1 else None


def cmd_gateway(args: argparse.Namespace) -> int:
    if getattr(args, "resume", False):
        return int(args.resume_run(args))
    console = Console(width=160)
    model = args.model or EngineSettings.load(args.profile).served_model_name
    max_conc = max(args.concurrency)
    with contextlib.ExitStack() as stack:
        if args.ramp_s is None:  # one response time: each stream's phase spread evenly
            args.ramp_s = (
                0.0 if args.upstream_url else (args.ttft_ms + args.tokens * args.itl_ms) / 1e3
            )
        if args.upstream_url:
            up_url, up_pid, kind = args.upstream_url, None, "engine"
        else:
            up_url, up_pid = stack.enter_context(
                synthetic_upstream(model, args.itl_ms, args.ttft_ms)
            )
            kind = f"synthetic, {args.tokens} tokens at {args.itl_ms:g} ms"
        if args.gateway_url:
            gw_url, gw_pid = args.gateway_url, args.gateway_pid
        else:
            gw_url, gw_pid = stack.enter_context(started_gateway(up_url, args.profile, max_conc))
        # The CPUs this process may use, not 0..cpu_count-1: in a cpuset (a container, taskset)
        # the last CPU of the host may not be ours, and pinning to it would fail.
        plan = pin_plan(os.sched_getaffinity(0)) if args.pin and gw_pid else None
        if plan:
            gw_cpus, others = plan
            _pin(gw_pid, gw_cpus)
            os.sched_setaffinity(0, others)
            if up_pid:
                _pin(up_pid, others)
        with httpx.Client(timeout=10) as http:  # fail fast if the gateway does not serve
            http.get(gw_url + "/v1/models").raise_for_status()
        console.print(
            f"gateway {gw_url} (pid {gw_pid}) -> upstream {up_url} ({kind}); first requests "
            f"spread over {args.ramp_s:g} s" + (" (a burst)" if not args.ramp_s else "")
        )
        started = dt.datetime.now().isoformat(timespec="seconds")
        rows = measure(args, gw_url, up_url, gw_pid, model, console)
    meta = {
        "upstream": kind,
        "started": started,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "pinned": (
            {"gateway": sorted(plan[0]), "others": sorted(plan[1])} if plan else None
        ),  # what was applied: None without --pin, a gateway PID or a second CPU
        "rounds": args.rounds,
        "ramp_s": args.ramp_s,
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
    }
    table, md = render(rows, meta)
    console.print(table)
    line = verdict(rows) if not args.upstream_url else None
    if line:
        console.print(line)
    console.print(f"load average at the end: {meta['load_avg_at_end']} on {meta['cpus']} CPUs")
    out = args.out or Path("results/bench-gateway") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / "results.md").write_text(
        f"{md}\n\n{line or ''}\n\n`{meta['command']}` on `{meta['host']}` ({meta['cpus']} CPUs, "
        f"load average at the end {meta['load_avg_at_end']}), {started}\n"
    )
    console.print(f"results: {out}")
    return 0
