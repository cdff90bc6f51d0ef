"""``python -m bench replicas``: one gateway over 1, 2 and 4 replicas, beside vllm-router.

What it answers (issue 12): does throughput scale with replicas behind the gateway, what does
routing cost, and how do requests that share a prefix spread, for each ``GATEWAY_ROUTING``
policy and for the router users would otherwise pick, vllm-router (vllm-project's Rust router,
``--policy cache_aware`` and ``power_of_two``), over the same replicas and the same load.

The replicas are synthetic upstreams (``bench.synthetic``, one process and port each) with a
TTFT, an inter-token delay and a capacity (``--max-running``, like vLLM's ``--max-num-seqs``:
streams beyond it queue in the replica), so a replica saturates as an engine does and adding
replicas adds capacity. The gateway is the real one (``python -m gateway``, every replica marked
warm through the warm-up handshake) with ``GATEWAY_UPSTREAM_URLS``, its per-replica in-flight
cap set to the replicas' capacity (as ``ENGINE_MAX_NUM_SEQS`` would) and its queue above the
load. Load: ``bench.client`` (closed loop, ``c`` streams, first requests spread over one
response time). Workloads:

- ``distinct``: every prompt is its own random words (nothing shared): balance is the point;
- ``shared``: a system message drawn at random from ``--prefixes`` long system prompts, then a
  short distinct user message: where each prefix's requests land is the point.

Per run it reports request and output-token throughput, TTFT p50/p99, the requests each replica
served (counted by the replicas themselves, ``GET /synthetic/stats``; the gateway's own
``served`` from ``GET /internal/replicas`` is checked against them), max/min over replicas, for
``shared`` the fraction of each prefix's requests that went to its most-used replica (mean and
worst over prefixes), the router's CPU seconds per 1,000 requests (psutil on its process tree,
its idle polling rate subtracted), and the upstream HTTP calls the router made per request
(vllm-router's ``cache_aware`` asks every replica for ``/v1/chat/completions/render`` and, after
a 404, ``/tokenize`` before each completion; the replicas answer ``/render`` with
``--render-status``, 404 by default: with vLLM 0.32's default 403 it routes without prefixes).

Routing decision latency (``--routing-only`` or ``python -m bench routing`` for just this part):
``gateway.routing.build_scheduler(policy).pick(key, replicas)`` over 2/4/8 fake replicas whose
loads move as requests come and go, keys from ``gateway.routing.prefix.routing_key`` over the
same request bodies; p50/p99 per decision, with and without computing the key. Target: <= 0.1
ms p50 (issue 12). Printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from bench.client import Target
from bench.gatewayproc import ServerProcess, free_port, mark_all_warm, replicas, run_gateway
from bench.grid import int_list
from bench.metrics import summarize
from bench.overhead import ProcWatch
from bench.prompts import CANDIDATE_WORDS
from bench.shards import run_cell_load
from env.settings import DEFAULT_PROFILE, EngineSettings

GATEWAY_POLICIES = ("prefix", "least_loaded", "round_robin")
VLLM_ROUTER_POLICIES = ("cache_aware", "power_of_two", "round_robin", "random", "consistent_hash")
WORKLOADS = ("distinct", "shared")
DEFAULT_ROUTERS = (
    "gateway:prefix,gateway:least_loaded,gateway:round_robin,"
    "vllm-router:cache_aware,vllm-router:power_of_two"
)
ROUTING_TARGET_P50_US = 100.0
TEMPLATE_TOKENS = 8  # the synthetic counts the tiny Gemma 4 chat template as 8 tokens


# --- arguments ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterSpec:
    """One router under test: ``gateway`` or ``vllm-router``, with its policy."""

    kind: str
    policy: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.policy}"

    def min_replicas(self) -> int:
        """vllm-router refuses to start power_of_two over fewer than two workers."""
        return 2 if (self.kind, self.policy) == ("vllm-router", "power_of_two") else 1


def parse_routers(text: str) -> list[RouterSpec]:
    """``gateway:prefix,vllm-router:cache_aware,...``; one clear line per bad entry."""
    out: list[RouterSpec] = []
    problems: list[str] = []
    allowed = {"gateway": GATEWAY_POLICIES, "vllm-router": VLLM_ROUTER_POLICIES}
    for raw in text.split(","):
        item = raw.strip()
        kind, _, policy = item.partition(":")
        if kind not in allowed:
            problems.append(f"--routers: {item!r}: the router is gateway or vllm-router")
        elif policy not in allowed[kind]:
            problems.append(f"--routers: {item!r}: {kind} policies are {', '.join(allowed[kind])}")
        elif RouterSpec(kind, policy) in out:
            problems.append(f"--routers: {item!r} is listed twice")
        else:
            out.append(RouterSpec(kind, policy))
    if problems:
        raise argparse.ArgumentTypeError("\n".join(problems))
    return out


def parse_workloads(text: str) -> list[str]:
    items = [w.strip() for w in text.split(",")]
    bad = [w for w in items if w not in WORKLOADS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"--workloads: {', '.join(bad) or '(empty)'}: one of {', '.join(WORKLOADS)}"
        )
    return list(dict.fromkeys(items))


def positive_list(text: str) -> list[int]:
    values = int_list(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: positive integers expected")
    return values


# --- workloads ------------------------------------------------------------------------------------


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(CANDIDATE_WORDS[i] for i in rng.integers(len(CANDIDATE_WORDS), size=n))


@dataclass
class Prompts:
    """Chat messages for request ``i`` (deterministic from the seed, built lazily).

    ``prefixes`` 0: one user message of ``suffix_words`` random words per request (``distinct``).
    ``prefixes`` k: a system message, one of k fixed prompts of ``prefix_words`` words drawn at
    random per request, then a user message of ``suffix_words`` random words (``shared``).
    Same interface as ``bench.prompts.PromptSet`` where ``bench.client`` reads it.
    """

    suffix_words: int
    prefixes: int = 0
    prefix_words: int = 0
    seed: int = 0
    _systems: list[str] = field(default_factory=list, init=False, repr=False)

    @property
    def tokens(self) -> int:
        return self.suffix_words + (self.prefix_words if self.prefixes else 0) + TEMPLATE_TOKENS

    def prefix_of(self, i: int) -> int | None:
        if not self.prefixes:
            return None
        return int(np.random.default_rng([self.seed, i, 7]).integers(self.prefixes))

    def system(self, k: int) -> str:
        if not self._systems:
            self._systems = [
                _words(np.random.default_rng([self.seed, 0x5157, j]), self.prefix_words)
                for j in range(self.prefixes)
            ]
        return self._systems[k]

    def text(self, i: int) -> list[dict[str, str]]:
        words = _words(np.random.default_rng([self.seed, i]), self.suffix_words)
        user = {"role": "user", "content": words}
        k = self.prefix_of(i)
        return [user] if k is None else [{"role": "system", "content": self.system(k)}, user]

    def body(self, i: int, model: str = "m", max_tokens: int = 16) -> dict[str, Any]:
        return {"model": model, "messages": self.text(i), "max_tokens": max_tokens, "stream": True}


@dataclass(frozen=True)
class MessagesTarget(Target):
    """A chat target whose "text" is already the message list (``Prompts.text``)."""

    def payload(self, text: Any, max_tokens: int) -> bytes:
        body = json.loads(super().payload("", max_tokens))
        body["messages"] = text
        return json.dumps(body).encode()


# --- result maths -------------------------------------------------------------------------------


def diff_counts(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """after - before per key (keys only in ``after`` count from 0); zero entries dropped."""
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in out.items() if v}


def balance(counts: Sequence[int]) -> float | None:
    """max / min requests over replicas (1.0 = even); None when a replica got none."""
    if not counts or min(counts) <= 0:
        return None
    return max(counts) / min(counts)


def prefix_spread(per_replica: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """Per prefix: the fraction of its requests on the replica that got most of them."""
    totals: dict[str, int] = {}
    tops: dict[str, int] = {}
    for counts in per_replica:
        for key, n in counts.items():
            if key == "other":
                continue
            totals[key] = totals.get(key, 0) + n
            tops[key] = max(tops.get(key, 0), n)
    return {k: tops[k] / totals[k] for k in totals if totals[k]}


def per_1k(value: float | None, requests: int) -> float | None:
    return None if value is None or not requests else value / requests * 1000.0


def run_row(
    replicas_n: int,
    router: RouterSpec,
    workload: str,
    concurrency: int,
    metrics: Mapping[str, Any],
    served: Sequence[int],
    prefix_counts: Sequence[Mapping[str, int]],
    cpu_s: float | None,
    upstream_calls: int,
    gateway_served: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One measured run as a flat row (what the table and results.json show).

    ``served``: requests each replica counted itself (its completions POSTs) during the run;
    ``upstream_calls``: every HTTP request the replicas saw then except the router's background
    polling (completions + render + tokenize), so calls/request shows a router's extra round
    trips; ``gateway_served``: the gateway's own per-replica counts, for the cross-check.
    """
    spread = prefix_spread(prefix_counts) if workload == "shared" else {}
    requests = int(metrics["requests"])
    return {
        "replicas": replicas_n,
        "router": router.label,
        "workload": workload,
        "concurrency": concurrency,
        "requests": requests,
        "errors": int(metrics["errors"]) + int(metrics["timeouts"]),
        "request_throughput": metrics["request_throughput"],
        "output_throughput": metrics["output_throughput"],
        "ttft_ms_p50": metrics["ttft_ms_p50"],
        "ttft_ms_p99": metrics["ttft_ms_p99"],
        "served": list(served),
        "balance": balance(served),
        "prefix_top_mean": float(np.mean(list(spread.values()))) if spread else None,
        "prefix_top_min": min(spread.values()) if spread else None,
        "prefixes_seen": len(spread),
        "cpu_s_per_1k_requests": per_1k(cpu_s, requests),
        "upstream_calls_per_request": upstream_calls / requests if requests else None,
        "gateway_served_matches": (
            None if gateway_served is None else list(gateway_served) == list(served)
        ),
    }


# --- routing decision latency --------------------------------------------------------------------


@dataclass(eq=False)
class FakeReplica:
    """A ``gateway.routing.Candidate`` with settable load: what the scheduler reads."""

    name: str
    cap: int = 64
    inflight: int = 0
    served: int = 0
    routable: bool = True
    saturated: bool = False

    @property
    def load(self) -> float:
        return float(self.inflight)


def percentiles_us(samples_ns: Sequence[int]) -> tuple[float, float]:
    arr = np.asarray(samples_ns, dtype=float) / 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def routing_latency(
    policy: str,
    replicas_n: int,
    bodies: Sequence[dict[str, Any]],
    decisions: int,
    clock: Callable[[], int] = time.perf_counter_ns,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``pick`` (and ``routing_key`` + ``pick``) over fake replicas whose loads change.

    Each decision's replica gets one more request in flight; then, while more than 16 per
    replica are in flight, a random one ends, below that one ends half the time: the loads wander
    around 16 per replica as in steady serving, so the pickers compare unequal loads.
    """
    from gateway.routing import Request, build_scheduler
    from gateway.routing.prefix import routing_key

    sched = build_scheduler(policy)
    reps = [FakeReplica(f"10.0.0.{k + 1}:8000") for k in range(replicas_n)]
    rng = np.random.default_rng(seed)
    ends = rng.random(decisions)
    pick_ns: list[int] = []
    total_ns: list[int] = []
    for d in range(decisions):
        body = bodies[d % len(bodies)]
        t0 = clock()
        key = routing_key("chat", body)
        t1 = clock()
        chosen = sched.pick(Request.keyed(key), reps)
        t2 = clock()
        pick_ns.append(t2 - t1)
        total_ns.append(t2 - t0)
        if chosen is None:
            raise RuntimeError(f"{policy}: no replica chosen among routable ones")
        chosen.inflight += 1
        chosen.served += 1
        busy = [r for r in reps if r.inflight]
        if sum(r.inflight for r in reps) > 16 * replicas_n or ends[d] < 0.5:
            busy[int(ends[d] * 1e6) % len(busy)].inflight -= 1
    p50, p99 = percentiles_us(pick_ns)
    k50, k99 = percentiles_us(total_ns)
    return {
        "policy": policy,
        "replicas": replicas_n,
        "decisions": decisions,
        "pick_us_p50": p50,
        "pick_us_p99": p99,
        "key_pick_us_p50": k50,
        "key_pick_us_p99": k99,
    }


def routing_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    sets = [
        Prompts(args.suffix_words, seed=args.seed),
        Prompts(args.suffix_words, args.prefixes, args.prefix_words, seed=args.seed),
    ]
    bodies = [p.body(i) for p in sets for i in range(256)]
    return [
        routing_latency(policy, n, bodies, args.decisions)
        for n in args.routing_replicas
        for policy in GATEWAY_POLICIES
    ]


# --- processes --------------------------------------------------------------------------------


def synthetic_argv(args: argparse.Namespace, model: str) -> list[str]:
    """One synthetic replica: a free port, the replica model's timings and capacity, content
    token ids and the render answer vllm-router gets."""
    return [
        sys.executable, "-m", "bench", "synthetic", "--port", "0", "--model", model,
        "--itl-ms", str(args.itl_ms), "--ttft-ms", str(args.ttft_ms),
        "--max-running", str(args.max_running), "--content-token-ids",
        "--render-status", str(args.render_status),
    ]  # fmt: skip


@contextlib.contextmanager
def synthetic_replicas(n: int, args: argparse.Namespace, model: str) -> Iterator[list[str]]:
    """``n`` synthetic upstreams, each its own process group and port; yields their URLs."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    synthetic_argv(args, model),
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        urls = []
        for p in procs:
            line = p.stdout.readline() if p.stdout else ""
            if "http://" not in line:
                raise RuntimeError(f"synthetic upstream did not start: {line!r}")
            urls.append(line.split()[3])
        yield urls
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@dataclass
class Router:
    """A started router: its URL, PID (for CPU) and how to read its own per-replica counts."""

    url: str
    pid: int
    served: Callable[[], dict[str, int]] | None = None  # the gateway's /internal/replicas


def vllm_router_binary() -> str | None:
    """``vllm-router`` next to this Python (the venv), else on PATH."""
    here = Path(sys.executable).with_name("vllm-router")
    return str(here) if here.exists() else shutil.which("vllm-router")


def smg_binary() -> str | None:
    """SGLang's model gateway (``smg`` on PyPI), in its own venv: ``BENCH_SMG``, else
    ``.cache/smg/bin/smg`` under the repository, else on PATH."""
    if (env := os.environ.get("BENCH_SMG")) and Path(env).exists():
        return env
    here = Path(__file__).resolve().parent.parent / ".cache" / "smg" / "bin" / "smg"
    return str(here) if here.exists() else shutil.which("smg")


def vllm_router_argv(binary: str, port: int, metrics_port: int, urls: Sequence[str],
                     policy: str, log_level: str = "warning") -> list[str]:  # fmt: skip
    """The command line: loopback only, our ports, the replicas, the policy; its request
    timeout and health checks left at their defaults."""
    return [
        binary, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls,
        "--policy", policy, "--prometheus-host", "127.0.0.1",
        "--prometheus-port", str(metrics_port), "--log-level", log_level,
    ]  # fmt: skip


@contextlib.contextmanager
def start_router(
    spec: RouterSpec, urls: Sequence[str], args: argparse.Namespace, max_conc: int
) -> Iterator[Router]:
    if spec.kind == "gateway":
        env = {
            "GATEWAY_UPSTREAM_URLS": ",".join(urls),
            "GATEWAY_ROUTING": spec.policy,
            # per replica, what ENGINE_MAX_NUM_SEQS would say; the queue holds the whole load
            "GATEWAY_MAX_INFLIGHT": str(args.max_running or max(2 * max_conc, 64)),
            "GATEWAY_QUEUE_DEPTH": str(max(2 * max_conc, 256)),
            "GATEWAY_QUEUE_TIMEOUT_S": str(args.timeout),
        }
        with run_gateway(urls[0], env=env, profile=args.profile or DEFAULT_PROFILE) as gw:
            mark_all_warm(gw)

            def served() -> dict[str, int]:
                return {str(r["name"]): int(r["served"]) for r in replicas(gw)}  # type: ignore[call-overload]

            yield Router(gw.url, gw.pid, served)
        return
    binary = vllm_router_binary()
    if binary is None:
        raise FileNotFoundError("vllm-router is not installed (pip install vllm-router)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vllm-router-") as tmp:
        server = ServerProcess(
            argv=vllm_router_argv(binary, port, free_port(), urls, spec.policy),
            env={"NO_COLOR": "1"},
            ready_url=f"http://127.0.0.1:{port}/health",
            log_path=Path(tmp) / "router.log",
        )
        server.start(timeout_s=60.0)
        try:
            yield Router(f"http://127.0.0.1:{port}", server.pid)
        finally:
            server.stop(grace_s=5.0)


def upstream_stats(http: httpx.Client, urls: Sequence[str]) -> list[dict[str, Any]]:
    return [http.get(u + "/synthetic/stats").raise_for_status().json() for u in urls]


def is_request_call(path: str) -> bool:
    """Made on a request's behalf (completions, their render, tokenize), not background polling."""
    return "completions" in path or path == "/tokenize"


def request_calls(paths: Mapping[str, int]) -> int:
    return sum(n for p, n in paths.items() if is_request_call(p))


def polled(paths: Mapping[str, int]) -> dict[str, int]:
    """The rest: what the router polls on its own (health, metrics, load), ours excluded."""
    return {p: n for p, n in paths.items() if not is_request_call(p) and p != "/synthetic/stats"}


# --- the run ----------------------------------------------------------------------------------


def measure_router(
    spec: RouterSpec,
    urls: list[str],
    args: argparse.Namespace,
    model: str,
    console: Console,
    rows: list[dict[str, Any]],
) -> None:
    """Measure one router over ``urls``: every workload x concurrency, appended to ``rows`` as
    each finishes (an interrupted run keeps them)."""
    ramp = (
        args.ramp_s if args.ramp_s is not None else (args.ttft_ms + args.tokens * args.itl_ms) / 1e3
    )
    with (
        start_router(spec, urls, args, max(args.concurrency)) as router,
        httpx.Client(timeout=10, trust_env=False) as http,
    ):
        target = MessagesTarget(router.url, model, api="chat", timeout_s=args.timeout)
        warm = Prompts(args.suffix_words, seed=args.seed + 999)
        run_cell_load(target, warm, range(64), 64, args.tokens)  # connections, caches: unmeasured
        watch = ProcWatch(router.pid)
        c0, t0 = watch.cpu_seconds(), time.perf_counter()
        time.sleep(args.idle_s)
        idle_rate = (watch.cpu_seconds() - c0) / (time.perf_counter() - t0)
        names = [u.removeprefix("http://") for u in urls]
        for workload in args.workloads:
            prompts = (
                Prompts(args.suffix_words, args.prefixes, args.prefix_words, seed=args.seed)
                if workload == "shared"
                else Prompts(args.suffix_words, seed=args.seed)
            )
            for conc in args.concurrency:
                n = max(args.min_requests, conc * args.requests_per_stream)
                before = upstream_stats(http, urls)
                gw_before = router.served() if router.served else None
                cpu0 = watch.cpu_seconds()
                load = run_cell_load(target, prompts, range(n), conc, args.tokens, ramp_s=ramp)
                cpu1 = watch.cpu_seconds()
                if load.interrupted:
                    raise KeyboardInterrupt
                after = upstream_stats(http, urls)
                m = summarize(load.records)
                served = [a["requests"] - b["requests"] for a, b in zip(after, before, strict=True)]
                gw_served = None
                if router.served and gw_before is not None:
                    gw_after = router.served()
                    gw_served = [gw_after.get(k, 0) - gw_before.get(k, 0) for k in names]
                paths: dict[str, int] = {}
                for a, b in zip(after, before, strict=True):
                    for path, k in diff_counts(b["paths"], a["paths"]).items():
                        paths[path] = paths.get(path, 0) + k
                calls = request_calls(paths)
                cpu = max(0.0, cpu1 - cpu0 - idle_rate * m["duration_s"])
                row = run_row(
                    len(urls), spec, workload, conc, m, served,
                    [diff_counts(b["prefixes"], a["prefixes"]) for a, b in zip(after, before, strict=True)],
                    cpu, calls, gw_served,
                )  # fmt: skip
                row["polled"] = polled(paths)
                rows.append(row)
                console.print(
                    f"  {len(urls)} x {spec.label:<24} {workload:<8} c={conc:<4} "
                    f"{fmt(row['request_throughput'], '.1f')} req/s "
                    f"TTFT p50 {fmt(row['ttft_ms_p50'], '.0f')} p99 {fmt(row['ttft_ms_p99'], '.0f')} ms "
                    f"served {'/'.join(map(str, served))} errors {row['errors']}"
                )
                if first := next((r.error for r in load.records if not r.ok), None):
                    console.print(f"    first error: {first}")


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


RUN_COLUMNS = [
    ("replicas", "replicas", "d"),
    ("router", "router", ""),
    ("workload", "workload", ""),
    ("streams", "concurrency", "d"),
    ("req/s", "request_throughput", ".1f"),
    ("tok/s", "output_throughput", ",.0f"),
    ("TTFT p50 ms", "ttft_ms_p50", ".0f"),
    ("TTFT p99 ms", "ttft_ms_p99", ".0f"),
    ("per replica", "served", ""),
    ("max/min", "balance", ".2f"),
    ("prefix on top replica (mean / worst)", None, ""),
    ("CPU s / 1k req", "cpu_s_per_1k_requests", ".2f"),
    ("upstream calls / req", "upstream_calls_per_request", ".1f"),
    ("errors", "errors", "d"),
]

ROUTING_COLUMNS = [
    ("policy", "policy", ""),
    ("replicas", "replicas", "d"),
    ("pick p50 us", "pick_us_p50", ".1f"),
    ("pick p99 us", "pick_us_p99", ".1f"),
    ("key + pick p50 us", "key_pick_us_p50", ".1f"),
    ("key + pick p99 us", "key_pick_us_p99", ".1f"),
]


def cells(row: Mapping[str, Any], columns: Sequence[tuple[str, str | None, str]]) -> list[str]:
    out = []
    for _, key, spec in columns:
        if key is None:
            out.append(
                "-"
                if row.get("prefix_top_mean") is None
                else f"{row['prefix_top_mean']:.2f} / {row['prefix_top_min']:.2f}"
            )
        elif key == "served":
            out.append("/".join(str(v) for v in row["served"]))
        elif isinstance(row.get(key), str):
            out.append(row[key])
        else:
            out.append(fmt(row.get(key), spec))
    return out


def render(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str | None, str]], title: str
) -> tuple[Table, str]:
    """A rich table for the terminal and the same as markdown."""
    table = Table(title=title)
    for label, _, _ in columns:
        table.add_column(
            label,
            justify="left" if label in ("router", "workload", "policy") else "right",
            no_wrap=label in ("router", "per replica"),
        )
    md = ["| " + " | ".join(c[0] for c in columns) + " |",
          "|" + "|".join(":--" if c[0] in ("router", "workload", "policy") else "--:" for c in columns) + "|"]  # fmt: skip
    for r in rows:
        vals = cells(r, columns)
        table.add_row(*vals)
        md.append("| " + " | ".join(vals) + " |")
    return table, "\n".join(md)


def routing_verdict(rows: Sequence[Mapping[str, Any]]) -> str:
    worst = max(rows, key=lambda r: r["key_pick_us_p50"])
    ok = worst["key_pick_us_p50"] <= ROUTING_TARGET_P50_US
    return (
        f"routing decision (key + pick) p50 at worst {worst['key_pick_us_p50']:.1f} us "
        f"({worst['policy']}, {worst['replicas']} replicas): target <= "
        f"{ROUTING_TARGET_P50_US:.0f} us p50: {'PASS' if ok else 'MISS'}"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replicas",
        help="gateway over 1/2/4 synthetic replicas vs vllm-router; routing decision latency",
    )
    add_args(p)
    p.set_defaults(func=cmd_replicas)
    r = sub.add_parser("routing", help="routing decision latency only (= replicas --routing-only)")
    add_args(r)
    r.set_defaults(func=cmd_replicas, routing_only=True)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="env profile for the gateway (default cpu)")
    p.add_argument("--replicas", type=positive_list, default="1,2,4", help="replica counts")
    p.add_argument("--concurrency", type=positive_list, default="64,256", help="streams")
    p.add_argument("--routers", type=parse_routers, default=DEFAULT_ROUTERS,
                   help="comma list of gateway:POLICY and vllm-router:POLICY")  # fmt: skip
    p.add_argument("--workloads", type=parse_workloads, default="distinct,shared")
    p.add_argument("--tokens", type=int, default=32, help="tokens per response")
    p.add_argument("--itl-ms", type=float, default=20.0, help="replica inter-token delay")
    p.add_argument("--ttft-ms", type=float, default=50.0, help="replica time to first token")
    p.add_argument("--max-running", type=int, default=32,
                   help="streams one replica generates at once (its max-num-seqs)")  # fmt: skip
    p.add_argument(
        "--render-status",
        type=int,
        choices=(403, 404),
        default=404,
        help="the replicas' answer to vllm-router's /render calls: 404 (default: it falls back "
        "to /tokenize and cache_aware sees prefixes) or 403 (vLLM 0.32 without "
        "--enable-scale-out: cache_aware routes without prefix information)",
    )
    p.add_argument("--prefixes", type=int, default=8, help="distinct system prompts (shared)")
    p.add_argument("--prefix-words", type=int, default=1000, help="words per system prompt")
    p.add_argument("--suffix-words", type=int, default=32, help="words per user message")
    p.add_argument("--requests-per-stream", type=int, default=2)
    p.add_argument("--min-requests", type=int, default=32)
    p.add_argument("--ramp-s", type=float,
                   help="spread first requests over this many s (default: one response time)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--idle-s", type=float, default=2.0, help="idle CPU baseline window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="model name (default: the profile's served name)")
    p.add_argument("--routing-only", action="store_true",
                   help="only the routing decision microbenchmark (seconds)")  # fmt: skip
    p.add_argument("--routing-replicas", type=positive_list, default="2,4,8")
    p.add_argument("--decisions", type=int, default=20000, help="per policy and replica count")
    p.add_argument("--out", type=Path, help="dir for results.json and results.md")


def cmd_replicas(args: argparse.Namespace) -> int:
    console = Console(width=200)
    # SIGTERM (a timeout, a supervisor) unwinds like Ctrl-C, so every replica and router
    # started here is stopped by its context manager instead of being orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    model = args.model or EngineSettings.load(args.profile).served_model_name
    started = dt.datetime.now().isoformat(timespec="seconds")
    routing = routing_rows(args)
    rtable, rmd = render(routing, ROUTING_COLUMNS, "routing decision latency (fake replicas)")
    console.print(rtable)
    verdict = routing_verdict(routing)
    console.print(verdict)
    runs: list[dict[str, Any]] = []
    not_run: list[str] = []
    interrupted = False
    try:
        if not args.routing_only:
            for n in args.replicas:
                with synthetic_replicas(n, args, model) as urls:
                    for spec in args.routers:
                        if n < spec.min_replicas():
                            not_run.append(f"{spec.label} over {n} replica: it needs >= 2 workers")
                            continue
                        if spec.kind == "vllm-router" and vllm_router_binary() is None:
                            not_run.append(f"{spec.label}: vllm-router is not installed")
                            continue
                        measure_router(spec, urls, args, model, console, runs)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the finished runs are still written
        interrupted = True
        not_run.append("interrupted: the runs after the last row")
    meta = {
        "started": started,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "render_status": args.render_status,
        "replica": {
            "ttft_ms": args.ttft_ms,
            "itl_ms": args.itl_ms,
            "tokens": args.tokens,
            "max_running": args.max_running,
        },
        "not_run": sorted(set(not_run)),
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
    }
    md = [rmd, "", verdict]
    if runs:
        title = (f"replicas: synthetic, TTFT {args.ttft_ms:g} ms, {args.tokens} tokens at "
                 f"{args.itl_ms:g} ms, {args.max_running} running per replica")  # fmt: skip
        table, run_md = render(runs, RUN_COLUMNS, title)
        console.print(table)
        md += ["", run_md]
    for line in meta["not_run"]:
        console.print(f"not run: {line}")
        md.append(f"\nnot run: {line}")
    console.print(f"load average at the end: {meta['load_avg_at_end']} on {meta['cpus']} CPUs")
    out = args.out or Path("results/bench-replicas") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "routing": routing, "runs": runs}, indent=1) + "\n"
    )
    (out / "results.md").write_text(
        "\n".join(md) + f"\n\n`{meta['command']}` on `{meta['host']}` ({meta['cpus']} CPUs, "
        f"load average at the end {meta['load_avg_at_end']}), {started}\n"
    )
    console.print(f"results: {out}")
    return 130 if interrupted else 0
