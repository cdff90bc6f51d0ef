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
import contextlib
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.gatewayproc import free_port, mark_warm, port_listening, run_gateway
from bench.overhead import synthetic_upstream

FLOOD = "sk-flood-0123456789abcdef"
SHORT = "sk-short-0123456789abcdef"
MODEL = "gemma-4-tiny"  # the cpu profile's served name (the gateway checks it)


def flood_keys(n: int) -> list[str]:
    """The flood's API keys: ``FLOOD`` alone, or ``n`` keys (``--flood-keys``)."""
    return [FLOOD] if n <= 1 else [f"sk-flood{i:02d}-0123456789abcdef" for i in range(n)]


def keys_yaml(flood_class: str, n_flood: int = 1) -> str:
    floods = "".join(
        f"  - {{key: {k}, label: flood{i if n_flood > 1 else ''}, priority: {flood_class}}}\n"
        for i, k in enumerate(flood_keys(n_flood))
    )
    return f"keys:\n{floods}  - {{key: {SHORT}, label: short, priority: interactive}}\n"


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


async def _short(client: httpx.AsyncClient, args: argparse.Namespace) -> float | None:
    """One short request's TTFT; ``inf`` when it had none within ``--short-timeout-s`` (a
    starved request is a result, and the flood would otherwise keep it waiting for minutes)."""
    try:
        async with asyncio.timeout(args.short_timeout_s):
            return await _ttft(client, SHORT, args.short_tokens)
    except TimeoutError:
        return math.inf


async def _flood(
    client: httpx.AsyncClient, n: int, tokens: int, stop: asyncio.Event, keys: list[str]
) -> None:
    async def one(key: str) -> None:
        while not stop.is_set():
            try:
                await _ttft(client, key, tokens)
            except httpx.HTTPError:
                await asyncio.sleep(0.1)

    await asyncio.gather(*(one(keys[i % len(keys)]) for i in range(n)))


async def _measure(
    short_url: str, args: argparse.Namespace, flood_urls: list[str] | tuple[str, ...] = ()
) -> list[float]:
    """The short key's TTFTs through ``short_url`` while ``8 x cap`` flood streams, split over
    ``flood_urls`` (none: no flood), keep their gateways' queues full."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=short_url, timeout=600, limits=limits)
        )
        stop = asyncio.Event()
        flooders = []
        for url in flood_urls:
            fc = await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=600, limits=limits)
            )
            n = 8 * args.cap // len(flood_urls)
            keys = flood_keys(getattr(args, "flood_keys", 1))
            flooders.append(asyncio.create_task(_flood(fc, n, args.long_tokens, stop, keys)))
        if flooders:
            await asyncio.sleep(args.warmup_s)  # the flood's queue builds up
        ttfts: list[float] = []
        pending = []
        for _ in range(args.samples):
            pending.append(asyncio.create_task(_short(client, args)))
            await asyncio.sleep(1.0)
        for t in await asyncio.gather(*pending):
            if t is not None:
                ttfts.append(t)
        stop.set()
        for f in flooders:
            f.cancel()
        return ttfts


def _n(ttfts: list[float]) -> int:
    """Short requests answered (a starved one is in the list as ``inf``, for the percentiles)."""
    return sum(1 for t in ttfts if t != math.inf)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run(args: argparse.Namespace) -> int:
    """One gateway (fifo vs fair, two flood classes), or ``--gateways N`` sharing their state."""
    return run_fleet(args) if args.gateways > 1 else run_one(args)


def run_one(args: argparse.Namespace) -> int:
    rows = []
    with synthetic_upstream(MODEL, args.itl_ms, args.ttft_ms) as (upstream, _):
        for flood_class in (args.flood_class,) if args.flood_class else ("interactive", "batch"):
            for scheduling, flood in (("fair", False), ("fifo", True), ("fair", True)):
                with tempfile.TemporaryDirectory() as tmp:
                    keys = Path(tmp) / "keys.yaml"
                    keys.write_text(keys_yaml(flood_class, args.flood_keys))
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
                        ttfts = asyncio.run(_measure(gw.url, args, (gw.url,) if flood else ()))
                label = f"{'flood ' + scheduling if flood else 'no flood'}"
                rows.append((flood_class, label, ttfts))
                print(f"  {flood_class:11s} {label:11s} n={_n(ttfts):3d} "
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
        print(f"| {flood_class} | {label} | {_n(ttfts)} | {_pct(ttfts, .5) * 1000:.1f} | "
              f"{_pct(ttfts, .99) * 1000:.1f} | {ratio:.2f}x |")  # fmt: skip
    return 0


def run_fleet(args: argparse.Namespace) -> int:
    """``--gateways N``: N gateway processes sharing their state through a local redis-server
    (``GATEWAY_STATE_URL``), the short key's requests through the last one; the flood through
    the first one, then spread over all of them (the case each gateway's own headroom cannot
    see: every gateway keeps its reserve, and the flood holds the fleet's cap)."""
    rows = []
    with (
        synthetic_upstream(MODEL, args.itl_ms, args.ttft_ms) as (upstream, _),
        tempfile.TemporaryDirectory() as tmp,
        _redis(Path(tmp)) as state_url,
    ):
        keys = Path(tmp) / "keys.yaml"
        keys.write_text(keys_yaml(args.flood_class or "interactive", args.flood_keys))
        env = {
            "GATEWAY_API_KEYS_FILE": str(keys), "GATEWAY_MAX_INFLIGHT": str(args.cap),
            "GATEWAY_QUEUE_DEPTH": str(16 * args.cap), "GATEWAY_QUEUE_TIMEOUT_S": "600",
            "GATEWAY_METRICS_MAX_AGE_S": "30", "GATEWAY_LOG_FORMAT": "off",
            "GATEWAY_STATE_URL": state_url,
        }  # fmt: skip
        with contextlib.ExitStack() as stack:
            gws = [
                stack.enter_context(run_gateway(upstream, env=env)) for _ in range(args.gateways)
            ]
            for gw in gws:
                mark_warm(gw)
            urls = [gw.url for gw in gws]
            scenarios = (("no flood", ()), ("flood on gateway 1", urls[:1]),
                         (f"flood on all {len(urls)}", urls))  # fmt: skip
            for label, flood_urls in scenarios:
                ttfts = asyncio.run(_measure(urls[-1], args, flood_urls))
                rows.append((label, ttfts))
                print(f"  {label:20s} n={_n(ttfts):3d} p50={_pct(ttfts, .5) * 1000:8.1f} ms "
                      f"p99={_pct(ttfts, .99) * 1000:8.1f} ms", flush=True)  # fmt: skip
                time.sleep(args.long_tokens * args.itl_ms / 1000 + 1)  # the flood's streams end
    print(
        f"\nshort key TTFT through gateway {args.gateways} of {args.gateways} (shared state), "
        f"fleet cap {args.cap}, flood {8 * args.cap} streams of {args.long_tokens} tokens over "
        f"{args.flood_keys} key(s) of class {args.flood_class or 'interactive'}"
    )
    print("| scenario | n | TTFT p50 ms | TTFT p99 ms | p50 / no flood | p99 / no flood |")
    print("|---|---|---|---|---|---|")
    base = rows[0][1]
    for label, ttfts in rows:
        r50 = _pct(ttfts, 0.5) / _pct(base, 0.5) if base and ttfts else float("nan")
        r99 = _pct(ttfts, 0.99) / _pct(base, 0.99) if base and ttfts else float("nan")
        print(f"| {label} | {_n(ttfts)} | {_pct(ttfts, .5) * 1000:.1f} | "
              f"{_pct(ttfts, .99) * 1000:.1f} | {r50:.2f}x | {r99:.2f}x |")  # fmt: skip
    return 0


@contextlib.contextmanager
def _redis(workdir: Path) -> Iterator[str]:
    """A private redis-server on a free loopback port, persistence off; its URL."""
    if shutil.which("redis-server") is None:
        raise SystemExit("--gateways > 1 needs redis-server on PATH (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not port_listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fairness", help="a flooding key vs a short-request key: TTFT, fifo/fair")
    p.add_argument("--cap", type=int, default=8, help="GATEWAY_MAX_INFLIGHT")
    p.add_argument("--long-tokens", type=int, default=100, help="tokens per flood stream")
    p.add_argument("--short-tokens", type=int, default=4)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--samples", type=int, default=20, help="short requests (one a second)")
    p.add_argument("--warmup-s", type=float, default=3.0, help="flood head start")
    p.add_argument("--short-timeout-s", type=float, default=30.0,
                   help="a short request without a first token by then counts as starved (inf)")  # fmt: skip
    p.add_argument("--gateways", type=int, default=1,
                   help="> 1: that many gateways sharing their state through a local "
                   "redis-server; the flood through one, then all (fleet-wide headroom)")  # fmt: skip
    p.add_argument("--flood-keys", type=int, default=1,
                   help="the flood spread over this many keys (each one of many tenants: the "
                   "headroom between keys no longer protects the short key, the fair order "
                   "in tokens does)")  # fmt: skip
    p.add_argument(
        "--flood-class",
        choices=["interactive", "batch"],
        help="the flood keys' class (the short key is interactive); default: both with one "
        "gateway, interactive with --gateways > 1",
    )
    p.set_defaults(func=run)
