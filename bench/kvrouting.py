"""``python -m bench kvrouting``: ``kv`` vs ``prefix`` vs ``least_loaded`` on two real CPU engines.

What it answers (issue 25): with a shared-prefix workload (``--prefixes`` long documents, each
request one of them plus a short distinct question, completions, streamed), how often does each
routing policy land a request where its prefix is cached, and what does that do to TTFT and
throughput? Both engines are started here with KV-cache events on (``python -m entrypoint serve
--replica I`` of the cpu profile with ``ENGINE_REPLICAS=2``: own ports, own cores), optionally
with a KV cache smaller than the documents (``--num-blocks``: vLLM's
``--num-gpu-blocks-override``, to make the engines evict). For each policy one real gateway
(``GATEWAY_ROUTING``) and fresh documents (the engines' caches are not reset between policies:
new documents make each run start cold), and ``single``: the same workload on one engine alone
(the reference hit rate; issue 25's target is ``kv`` >= 0.95 x that).

Per policy it prints: the engines' prefix-cache hit rate (``vllm:prefix_cache_hits_total`` /
``queries``, deltas summed over both), TTFT p50/p99 (first chunk at the client), request and
output-token throughput, the gateway's CPU seconds per request (psutil, its process tree), and
for ``kv`` alone the cost the policy adds per request: the ``/tokenize`` round trip (measured at
the client against an engine, the same call the gateway makes) and the hashing + scoring of the
prompt (``KVIndex.cached`` + ``KVCacheAware.pick`` in this process, over the same prompts).
Printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench.gatewayproc import ServerProcess, free_port, mark_all_warm, run_gateway

MODEL = "gemma-4-tiny"
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]
REPO = Path(__file__).resolve().parents[1]


def _doc(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@contextmanager
def engines(base_port: int, num_blocks: int | None, workdir: Path) -> Iterator[list[str]]:
    """Two replicas of the cpu profile with KV events on; their URLs."""
    with ExitStack() as stack:
        urls = []
        for i in range(2):
            env = {
                "ENGINE_PORT": str(base_port),
                "ENGINE_REPLICAS": "2",
                "ENGINE_KV_EVENTS": "on",
                "CACHE_HOT_DIR": str(workdir / "hot"),
                "CACHE_PERSIST_DIR": str(workdir / "persist"),
                "PYTHONUNBUFFERED": "1",
            }
            if num_blocks:
                env["ENGINE_EXTRA_ARGS"] = f"--num-gpu-blocks-override {num_blocks}"
            port = base_port + i
            server = ServerProcess(
                argv=[
                    sys.executable,
                    "-m",
                    "entrypoint",
                    "serve",
                    "--replica",
                    str(i),
                    "--profile",
                    str(REPO / "env" / "cpu.env"),
                ],
                env=env,
                ready_url=f"http://127.0.0.1:{port}/health",
                log_path=workdir / f"engine-{i}.log",
            )
            server.start(timeout_s=600.0)
            stack.callback(server.stop)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls


def _counters(urls: list[str]) -> tuple[float, float]:
    q = h = 0.0
    for u in urls:
        for line in httpx.get(f"{u}/metrics", timeout=30).text.splitlines():
            if line.startswith("vllm:prefix_cache_queries_total"):
                q += float(line.split()[-1])
            elif line.startswith("vllm:prefix_cache_hits_total"):
                h += float(line.split()[-1])
    return q, h


async def _one(
    client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int
) -> tuple[float, int]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0.0}  # fmt: skip
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: {"):
                ttft = time.perf_counter() - t0
    return (ttft if ttft is not None else float("nan")), max_tokens


async def _load(
    url: str, prompts: list[str], concurrency: int, max_tokens: int
) -> dict[str, float]:
    queue = list(reversed(prompts))
    ttfts: list[float] = []
    out_tokens = 0
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal out_tokens
            while queue:
                ttft, n = await _one(client, url, queue.pop(), max_tokens)
                ttfts.append(ttft)
                out_tokens += n

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        dur = time.perf_counter() - t0
    arr = np.array(ttfts)
    return {"ttft_p50_ms": float(np.percentile(arr, 50) * 1000),
            "ttft_p99_ms": float(np.percentile(arr, 99) * 1000),
            "req_s": len(prompts) / dur, "tok_s": out_tokens / dur}  # fmt: skip


def _cpu(pid: int) -> float:
    p = psutil.Process(pid)
    total = sum(p.cpu_times()[:2])
    for c in p.children(recursive=True):
        with suppress(psutil.NoSuchProcess):
            total += sum(c.cpu_times()[:2])
    return total


def _workload(seed: int, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    docs = [_doc(rng, args.prefix_words) for _ in range(args.prefixes)]
    prompts = [f"{rng.choice(docs)} question {i}: {_doc(rng, rng.randint(3, 30))}"
               for i in range(args.requests)]  # fmt: skip
    return docs, prompts


def _policy_cost(url: str, prompts: list[str]) -> dict[str, float]:
    """The kv policy's own work per request: /tokenize, and hashing + scoring here."""
    from gateway.kvindex.hashing import BlockHasher
    from gateway.kvindex.index import ReplicaBlocks
    from gateway.routing import Request
    from gateway.routing.kv import KVCacheAware

    tok_ms, toks = [], []
    with httpx.Client(timeout=30) as c:
        for p in prompts[:50]:
            t0 = time.perf_counter()
            toks.append(
                c.post(f"{url}/tokenize", json={"model": MODEL, "prompt": p}).json()["tokens"]
            )
            tok_ms.append((time.perf_counter() - t0) * 1000)
    hasher = BlockHasher(128)
    view = ReplicaBlocks()

    class Index:
        def cached(self, tokens, names):  # type: ignore[no-untyped-def]
            h = hasher.hashes(tokens)
            return {n: view.cached_tokens(h, 128, len(tokens)) for n in names}

    class R:
        def __init__(self, name: str) -> None:
            self.name, self.load, self.cap = name, 1.0, 64

    pol, reps = KVCacheAware(Index()), [R("a"), R("b")]
    t0 = time.perf_counter()
    for t in toks * 20:
        pol.pick(Request("completions", {}, tokens=t), reps)  # type: ignore[arg-type]
    pick_us = (time.perf_counter() - t0) / (len(toks) * 20) * 1e6
    return {"tokenize_ms_p50": statistics.median(tok_ms), "hash_score_us": pick_us,
            "tokens_mean": statistics.mean(len(t) for t in toks)}  # fmt: skip


@contextmanager
def _router(policy: str, ups: list[str]) -> Iterator[tuple[str, int]]:
    """The gateway with ``GATEWAY_ROUTING=policy`` (``single``: one upstream), vllm-router
    (``vllm-router:<policy>``, as ``python -m bench replicas`` runs it) or SGLang's model
    gateway (``smg:<policy>``: ``smg launch``, the same flags): (URL, pid)."""
    if policy.startswith(("vllm-router:", "smg:")):
        from bench.replicas import smg_binary, vllm_router_argv, vllm_router_binary

        peer, peer_policy = policy.split(":", 1)
        binary = vllm_router_binary() if peer == "vllm-router" else smg_binary()
        if binary is None:
            raise FileNotFoundError(
                "vllm-router is not installed (the bench extra)" if peer == "vllm-router" else
                "smg is not installed: python3.11 -m venv .cache/smg && .cache/smg/bin/pip "
                "install smg (its own venv: it pins a protobuf vLLM does not take), or BENCH_SMG"
            )  # fmt: skip
        port = free_port()
        with tempfile.TemporaryDirectory(prefix=f"{peer}-") as tmp:
            smg = peer == "smg"  # the same flags; its level is "warn"
            argv = vllm_router_argv(binary, port, free_port(), ups, peer_policy,
                                    "warn" if smg else "warning")  # fmt: skip
            if smg:
                argv.insert(1, "launch")  # its router-only command
            server = ServerProcess(argv=argv, env={"NO_COLOR": "1"},
                                   ready_url=f"http://127.0.0.1:{port}/health",
                                   log_path=Path(tmp) / "router.log")  # fmt: skip
            server.start(timeout_s=60.0)
            try:
                yield f"http://127.0.0.1:{port}", server.pid
            finally:
                server.stop(grace_s=5.0)
        return
    env = {"GATEWAY_UPSTREAM_URLS": ",".join(ups),
           "GATEWAY_ROUTING": "prefix" if policy == "single" else policy,
           "GATEWAY_QUEUE_DEPTH": "512", "GATEWAY_LOG_FORMAT": "off"}  # fmt: skip
    with run_gateway(ups[0], env=env) as gw:
        mark_all_warm(gw, timeout_s=120)
        time.sleep(1.5)  # the kv index's subscriptions connect (its own log says when)
        yield gw.url, gw.server.pid


def run(args: argparse.Namespace) -> int:
    policies = args.policies.split(",")
    with tempfile.TemporaryDirectory(prefix="kvrouting-") as tmp, ExitStack() as stack:
        urls = args.engine_urls.split(",") if args.engine_urls else None
        if urls is None:
            base = free_port()
            urls = stack.enter_context(engines(base, args.num_blocks, Path(tmp)))
        print(f"engines: {', '.join(urls)} (KV blocks override: {args.num_blocks or 'none'})")
        rows = []
        for n, policy in enumerate(policies):
            docs, prompts = _workload(1000 * (n + 1) + args.seed, args)
            ups = urls[:1] if policy == "single" else urls
            with _router(policy, ups) as (url, pid):
                asyncio.run(_load(url, [f"{d} warm" for d in docs[:1]], 1, 2))
                q0, h0 = _counters(ups)
                cpu0 = _cpu(pid)
                res = asyncio.run(_load(url, prompts, args.concurrency, args.max_tokens))
                cpu = (_cpu(pid) - cpu0) / len(prompts) * 1000
                q1, h1 = _counters(ups)
            res["hit_rate"] = (h1 - h0) / max(1.0, q1 - q0)
            res["gw_cpu_ms_req"] = cpu
            rows.append((policy, res))
            print(f"{policy:>12}: hit rate {res['hit_rate']:.3f}  TTFT p50 {res['ttft_p50_ms']:.1f} ms"
                  f"  p99 {res['ttft_p99_ms']:.1f} ms  {res['req_s']:.2f} req/s  "
                  f"{res['tok_s']:.1f} tok/s  router CPU {cpu:.2f} ms/req", flush=True)  # fmt: skip
        cost = _policy_cost(urls[0], _workload(args.seed, args)[1])
        print(f"\nkv policy cost per request: /tokenize {cost['tokenize_ms_p50']:.2f} ms p50 "
              f"(client-side round trip), hashing + scoring {cost['hash_score_us']:.0f} us "
              f"({cost['tokens_mean']:.0f} tokens)")  # fmt: skip
        print(
            "\n| policy | hit rate | TTFT p50 ms | TTFT p99 ms | req/s | out tok/s | router CPU ms/req |"
        )
        print("|---|---|---|---|---|---|---|")
        for policy, r in rows:
            print(f"| {policy} | {r['hit_rate']:.3f} | {r['ttft_p50_ms']:.1f} | "
                  f"{r['ttft_p99_ms']:.1f} | {r['req_s']:.2f} | {r['tok_s']:.1f} | "
                  f"{r['gw_cpu_ms_req']:.2f} |")  # fmt: skip
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kvrouting", help="kv vs prefix vs least_loaded on two real CPU engines")
    p.add_argument("--policies", default="single,kv,prefix,least_loaded",
                   help="gateway policies, single, vllm-router:<policy>, smg:<policy>")  # fmt: skip
    p.add_argument("--prefixes", type=int, default=8, help="shared documents per run")
    p.add_argument(
        "--prefix-words", type=int, default=500, help="words per document (~2 tokens each)"
    )
    p.add_argument("--requests", type=int, default=120)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=0,
                   help="vLLM --num-gpu-blocks-override (0: the profile's KV size)")  # fmt: skip
    p.add_argument("--engine-urls", default="", help="two running engines (events on) instead")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
