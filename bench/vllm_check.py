"""``python -m bench vllm-check``: one cell measured by our client and by ``vllm bench serve``.

Why: our numbers are only worth something if they agree with the tool operators already trust.
Both tools get the same cell (chat API, same prompt length as the server counts it, same
output length with ``ignore_eos``, same concurrency, request count and warm-up), alternately,
``--rounds`` times each so that drift on a shared machine hits both. Printed side by side with
the ratio ours / vLLM; not a timed test (a loaded 2-core machine can move either by more than
the 5% the issue hopes for, so the verdict is printed, never asserted).

vLLM's random dataset takes ``--random-input-len`` *before* the chat template; we ask for the
templated total, so ours = vLLM's input length + the measured template overhead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

COMPARED = [
    # (label, our key, vLLM key)
    ("TTFT mean (ms)", "ttft_ms_mean", "mean_ttft_ms"),
    ("TTFT p50 (ms)", "ttft_ms_p50", "median_ttft_ms"),
    ("TTFT p99 (ms)", "ttft_ms_p99", "p99_ttft_ms"),
    ("TPOT mean (ms)", "tpot_ms_mean", "mean_tpot_ms"),
    ("TPOT p50 (ms)", "tpot_ms_p50", "median_tpot_ms"),
    ("ITL p50 (ms)", "itl_ms_p50", "median_itl_ms"),
    ("E2EL p50 (ms)", "e2el_ms_p50", "median_e2el_ms"),
    ("output tok/s", "output_throughput", "output_throughput"),
    ("total tok/s", "total_throughput", "total_token_throughput"),
    ("requests/s", "request_throughput", "request_throughput"),
]
HEADLINE = {"ttft_ms_mean", "tpot_ms_mean", "output_throughput"}


def model_root(url: str) -> str | None:
    """The served model's path as the server reports it (``root`` in /v1/models)."""
    try:
        data = httpx.get(url.rstrip("/") + "/v1/models", timeout=10).json()["data"][0]
    except (httpx.HTTPError, KeyError, IndexError, ValueError):
        return None
    root = data.get("root")
    return root if root and Path(root).is_dir() else None


def run_vllm(args: argparse.Namespace, input_len: int, tokenizer: str, out: Path) -> dict:
    vllm = Path(sys.executable).with_name("vllm")
    cmd = [
        str(vllm), "bench", "serve", "--backend", "openai-chat",
        "--endpoint", "/v1/chat/completions", "--base-url", args.url,
        "--model", tokenizer, "--served-model-name", args.model, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(input_len),
        "--random-output-len", str(args.output_len), "--random-range-ratio", "0",
        "--ignore-eos", "--temperature", "0", "--max-concurrency", str(args.concurrency),
        "--num-prompts", str(args.requests), "--num-warmups", str(args.warmup),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name,
        "--disable-tqdm", "--seed", str(np.random.default_rng().integers(1 << 30)),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def run_ours(args: argparse.Namespace, context: int, out: Path) -> dict:
    """Our sweep for the one cell, in its own process like ``vllm bench serve``.

    In-process, the check's own state (imports, garbage, the previous round's objects) shared
    the machine's 2 cores with the engine differently from the vLLM side; as two CLIs launched
    the same way, the only difference left is the client.
    """
    cmd = [
        sys.executable, "-m", "bench", "sweep", "--url", args.url, "--model", args.model,
        "--api", "chat", "--context", str(context), "--concurrency", str(args.concurrency),
        "--output-len", str(args.output_len), "--requests", str(args.requests),
        "--warmup", str(args.warmup), "--timeout", str(args.timeout), "--no-plots",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"our sweep failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    row = json.loads((out / "cells.json").read_text())["cells"][0]
    if row["status"] != "ok":
        raise RuntimeError(f"our cell did not pass: {row['status']} {row.get('reason')}")
    return row


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vllm-check", help="one cell: our client vs `vllm bench serve`")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="gemma-4-tiny", help="served model name")
    p.add_argument("--tokenizer", help="model dir for vLLM's tokenizer (default: /v1/models root)")
    p.add_argument("--input-len", type=int, default=256, help="vLLM random-input-len")
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=160)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600)
    p.set_defaults(func=cmd_vllm_check)


def cmd_vllm_check(args: argparse.Namespace) -> int:
    from bench.prompts import Tokenizer, calibrate

    console = Console()
    tokenizer = args.tokenizer or model_root(args.url)
    if not tokenizer:
        console.print("no tokenizer dir: pass --tokenizer")
        return 2
    with httpx.Client(timeout=30) as http:
        overhead = calibrate(Tokenizer(http, args.url, args.model, "chat")).overhead
    context = args.input_len + overhead
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            console.print(f"round {k + 1}/{args.rounds}: ours ...")
            ours.append(run_ours(args, context, Path(tmp) / f"ours{k}"))
            console.print(f"round {k + 1}/{args.rounds}: vllm bench serve ...")
            theirs.append(run_vllm(args, args.input_len, tokenizer, Path(tmp) / f"vllm{k}.json"))
    table = Table(
        title=f"{args.url} chat, prompt {context} tokens ({args.input_len} + {overhead} template),"
        f" output {args.output_len}, concurrency {args.concurrency}, {args.requests} requests,"
        f" mean of {args.rounds} alternating rounds"
    )
    for col in ("metric", "ours", "vllm bench serve", "ours / vLLM"):
        table.add_column(col, justify="right")
    worst = 0.0
    for label, ok, vk in COMPARED:
        a = float(np.mean([r[ok] for r in ours]))
        b = float(np.mean([r[vk] for r in theirs]))
        ratio = a / b if b else float("nan")
        if ok in HEADLINE:
            worst = max(worst, abs(ratio - 1))
        table.add_row(label, f"{a:,.2f}", f"{b:,.2f}", f"{ratio:.3f}")
    table.add_row(
        "prompt tokens / request",
        f"{ours[0]['input_tokens'] / ours[0]['completed']:.1f}",
        f"{theirs[0]['total_input_tokens'] / theirs[0]['completed']:.1f}",
        "",
    )
    console.print(table)
    verdict = "within" if worst <= 0.05 else "NOT within"
    console.print(f"TTFT/TPOT/output tok/s: largest gap {worst:.1%} ({verdict} 5%)")
    return 0
