"""``python -m bench fairness``: one key floods, another sends one short request a second.

What it shows (issue 14): with one FIFO queue, a key that keeps 8x the in-flight cap of long
streams outstanding pushes every other key's TTFT up by the length of its queue; with fair
queuing (``GATEWAY_SCHEDULING=fair``) the other key's request goes after at most one request of
the flooding key, and with priority classes (the flood as ``batch``, held at its share of the
cap) an interactive key does not wait at all. Measured against the synthetic upstream (a count
and timing measurement of the gateway, not of an engine): the real gateway process, the same
keys file format an operator writes. Each scenario: the short key's TTFT p50/p99 (first content
chunk at the client) alone, then under the flood with ``fifo`` and with ``fair`` scheduling.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from bench.gatewayproc import mark_warm, run_gateway
from bench.overhead import synthetic_upstream

FLOOD = "sk-flood-0123456789abcdef"
SHORT = "sk-short-0123456789abcdef"
MODEL = "gemma-4-tiny"  # the cpu profile's served name (the gateway checks it)


def keys_yaml(flood_class: str) -> str:
    return (
        "keys:\n"
        f"  - {{key: {FLOOD}, label: flood, priority: {flood_class}}}\n"
        f"  - {{key: {SHORT}, label: short, priority: interactive}}\n"
    )


async def _ttft(client: httpx.AsyncClient, key: str, tokens: int) -> float | None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": tokens, "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        if r.status_code != 200:
            await r.aread()
            return None
        first = None
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.perf_counter() - t0
        return first


async def _flood(client: httpx.AsyncClient, n: int, tokens: int, stop: asyncio.Event) -> None:
    async def one() -> None:
        while not stop.is_set():
            try:
                await _ttft(client, FLOOD, tokens)
            except httpx.HTTPError:
                await asyncio.sleep(0.1)

    await asyncio.gather(*(one() for _ in range(n)))


async def _measure(url: str, args: argparse.Namespace, flood: bool) -> list[float]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        stop = asyncio.Event()
        flooder = None
        if flood:
            flooder = asyncio.create_task(_flood(client, 8 * args.cap, args.long_tokens, stop))
            await asyncio.sleep(args.warmup_s)  # the flood's queue builds up
        ttfts: list[float] = []
        pending = []
        for _ in range(args.samples):
            pending.append(asyncio.create_task(_ttft(client, SHORT, args.short_tokens)))
            await asyncio.sleep(1.0)
        for t in await asyncio.gather(*pending):
            if t is not None:
                ttfts.append(t)
        stop.set()
        if flooder is not None:
            flooder.cancel()
        return ttfts


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run(args: argparse.Namespace) -> int:
    rows = []
    with synthetic_upstream(MODEL, args.itl_ms, args.ttft_ms) as (upstream, _):
        for flood_class in ("interactive", "batch"):
            for scheduling, flood in (("fair", False), ("fifo", True), ("fair", True)):
                with tempfile.TemporaryDirectory() as tmp:
                    keys = Path(tmp) / "keys.yaml"
                    keys.write_text(keys_yaml(flood_class))
                    env = {
                        "GATEWAY_API_KEYS_FILE": str(keys),
                        "GATEWAY_MAX_INFLIGHT": str(args.cap),
                        "GATEWAY_QUEUE_DEPTH": str(16 * args.cap),
                        "GATEWAY_QUEUE_TIMEOUT_S": "600",
                        "GATEWAY_SCHEDULING": scheduling,
                        "GATEWAY_METRICS_MAX_AGE_S": "30",
                        "GATEWAY_LOG_FORMAT": "off",
                    }
                    with run_gateway(upstream, env=env) as gw:
                        mark_warm(gw)
                        ttfts = asyncio.run(_measure(gw.url, args, flood))
                label = f"{'flood ' + scheduling if flood else 'no flood'}"
                rows.append((flood_class, label, ttfts))
                print(f"  {flood_class:11s} {label:11s} n={len(ttfts):3d} "
                      f"p50={_pct(ttfts, .5) * 1000:8.1f} ms p99={_pct(ttfts, .99) * 1000:8.1f} ms",
                      flush=True)  # fmt: skip
    print(f"\nshort key TTFT, cap {args.cap}, flood {8 * args.cap} streams of "
          f"{args.long_tokens} tokens at {args.itl_ms:g} ms/token; 1 short request/s of "
          f"{args.short_tokens} tokens")  # fmt: skip
    print("| flood key class | scenario | n | TTFT p50 ms | TTFT p99 ms | p50 / no flood |")
    print("|---|---|---|---|---|---|")
    for flood_class, label, ttfts in rows:
        base = next(t for c, lab, t in rows if c == flood_class and lab == "no flood")
        # the same p50 on both sides (a median of an even count would put "no flood" off 1.00x)
        ratio = _pct(ttfts, 0.5) / _pct(base, 0.5) if base and ttfts else float("nan")
        print(f"| {flood_class} | {label} | {len(ttfts)} | {_pct(ttfts, .5) * 1000:.1f} | "
              f"{_pct(ttfts, .99) * 1000:.1f} | {ratio:.2f}x |")  # fmt: skip
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fairness", help="a flooding key vs a short-request key: TTFT, fifo/fair")
    p.add_argument("--cap", type=int, default=8, help="GATEWAY_MAX_INFLIGHT")
    p.add_argument("--long-tokens", type=int, default=100, help="tokens per flood stream")
    p.add_argument("--short-tokens", type=int, default=4)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--samples", type=int, default=20, help="short requests (one a second)")
    p.add_argument("--warmup-s", type=float, default=3.0, help="flood head start")
    p.set_defaults(func=run)
