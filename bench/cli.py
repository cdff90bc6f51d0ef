"""``python -m bench``: argparse front end. Every knob is a flag with a default that works on the
CPU engine; the profile (``--profile``, default ``$PROFILE`` or cpu) supplies the target URL,
max-model-len and chip count defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from bench import fairness, grid, kvrouting, overhead, replicas, resume, synthetic, vllm_check
from bench.grid import int_list

console = Console(stderr=True)


def _price(explicit: float | None, profile: str | None) -> tuple[float | None, str]:
    """The deployment's USD per hour and where it came from: the flag, else the profile's
    ``PRICE_PER_HOUR_USD`` (the one ``ops estimate_cost`` reads), else none (no cost figures:
    a CPU run is never priced at a TPU's list price)."""
    if explicit is not None:
        return explicit, "--price-per-hour"
    from env.settings import PriceSettings, profile_path

    path = profile_path(profile)
    try:
        price = PriceSettings.load(profile).price_per_hour_usd
    except Exception as exc:  # a broken profile must not stop a benchmark
        return None, f"{path.name} did not load ({type(exc).__name__})"
    if price is None:
        return None, f"{path.name} sets no PRICE_PER_HOUR_USD and no --price-per-hour was given"
    return price, f"{path.name}: PRICE_PER_HOUR_USD"


def _profile_defaults(profile: str | None) -> dict:
    """URL, max-model-len and chips from the profile's engine slice, if it loads."""
    try:
        from env.settings import EngineSettings

        eng = EngineSettings.load(profile)
        return {
            "url": eng.url,
            "max_model_len": eng.max_model_len,
            "chips": eng.tensor_parallel_size,
        }
    except Exception:  # a broken profile must not stop a benchmark against an explicit URL
        return {"url": "http://127.0.0.1:8000", "max_model_len": None, "chips": 1}


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        return Path(args.api_key_file).read_text().strip()
    return args.api_key or os.environ.get("OPENAI_API_KEY") or None


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="env profile for defaults (default $PROFILE or cpu)")
    p.add_argument("--url", help="OpenAI-compatible base URL (default: the profile's engine)")
    p.add_argument("--model", help="model name (default: the first of /v1/models)")
    p.add_argument("--api", choices=["chat", "completions"], default="chat")
    p.add_argument("--api-key", help="bearer token (default $OPENAI_API_KEY)")
    p.add_argument("--api-key-file", help="file holding the bearer token")


def sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="the concurrency x context sweep")
    add_target_args(p)
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU-engine preset: concurrency 1,8,32 x context 128,1024, output 64",
    )
    p.add_argument(
        "--concurrency",
        type=int_list,
        help="list (1,4,16) or power-of-two range (1..2048); default 1..2048",
    )
    p.add_argument(
        "--context", type=int_list, help="prompt tokens, list or range; default 4..16384"
    )
    p.add_argument("--output-len", type=int, help="output tokens per request (default 128)")
    p.add_argument(
        "--requests",
        type=int,
        help="requests per cell (default max(--min-requests, multiplier x conc))",
    )
    p.add_argument("--requests-multiplier", type=float, default=None)
    p.add_argument("--min-requests", type=int, default=None)
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="warm-up requests per cell at its own lengths (default 2)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, s")
    p.add_argument(
        "--max-error-rate",
        type=float,
        default=0.05,
        help="error+timeout rate above which a cell fails (default 0.05)",
    )
    p.add_argument("--slo-ttft-ms", type=float, default=1000.0)
    p.add_argument("--slo-tpot-ms", type=float, default=100.0)
    p.add_argument("--slo-e2el-ms", type=float, default=None)
    p.add_argument(
        "--slo-attainment",
        type=float,
        default=0.99,
        help="share of requests that must meet every SLO for a cell to pass",
    )
    p.add_argument(
        "--price-per-hour",
        type=float,
        help="USD per hour for the whole deployment (default: the profile's PRICE_PER_HOUR_USD; "
        "neither: the report has no cost figures)",
    )
    p.add_argument("--chips", type=int, help="chips billed (default: the profile's TP size)")
    p.add_argument("--knee-gain", type=float, default=0.10)
    p.add_argument("--stall-factor", type=float, default=10.0)
    p.add_argument("--stall-min-ms", type=float, default=100.0)
    p.add_argument("--out", type=Path, help="output dir (default results/bench/<timestamp>)")
    p.add_argument("--seed", type=int, help="prompt seed (default: random per run)")
    p.add_argument(
        "--shared-prefix",
        type=float,
        nargs="?",
        const=0.9,
        default=0.0,
        help="share this fraction of each prompt across a cell (default 0; bare: 0.9)",
    )
    p.add_argument(
        "--streams-per-process",
        type=int,
        default=512,
        help="client processes: ceil(concurrency / this)",
    )
    p.add_argument(
        "--max-model-len", type=int, help="override the server's max-model-len for skip decisions"
    )
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.analysis import Policy
    from bench.metrics import Slo
    from bench.sweep import Sweep, SweepConfig, default_out_dir

    prof = _profile_defaults(args.profile)
    price, price_source = _price(args.price_per_hour, args.profile)
    quick = args.quick
    cfg = SweepConfig(
        url=args.url or prof["url"],
        model=args.model,
        api=args.api,
        api_key=_api_key(args),
        contexts=args.context or list(grid.QUICK_CONTEXT if quick else grid.DEFAULT_CONTEXT),
        concurrencies=args.concurrency
        or list(grid.QUICK_CONCURRENCY if quick else grid.DEFAULT_CONCURRENCY),
        output_len=args.output_len or (grid.QUICK_OUTPUT if quick else 128),
        requests=args.requests,
        multiplier=args.requests_multiplier or (2.0 if quick else 5.0),
        min_requests=args.min_requests or (8 if quick else 20),
        warmup=args.warmup,
        timeout_s=args.timeout,
        max_error_rate=args.max_error_rate,
        slo=Slo(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2el_ms),
        policy=Policy(
            attainment=args.slo_attainment,
            knee_gain=args.knee_gain,
            stall_factor=args.stall_factor,
            stall_min_ms=args.stall_min_ms,
            price_per_hour=price,
            price_source=price_source,
            chips=args.chips or prof["chips"],
        ),
        out_dir=args.out or default_out_dir(Path("results/bench")),
        seed=args.seed,
        shared_prefix=args.shared_prefix,
        per_process=args.streams_per_process,
        max_model_len=args.max_model_len,
        temperature=args.temperature,
        plots=not args.no_plots,
    )
    sweep = Sweep(cfg, console)
    out = sweep.run()
    console.print(f"report: {out / 'report.md'}")
    return 130 if sweep.meta.get("interrupted") else 0


def compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="deltas between two sweeps (dirs or cells.json)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="relative change that counts as a regression (default 0.05)",
    )
    p.add_argument(
        "--fail-on-regression", action="store_true", help="exit 1 when any cell regressed (for CI)"
    )
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import print_compare

    n = print_compare(args.a, args.b, Console(), args.threshold)
    return 1 if (n and args.fail_on_regression) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sweep_parser(sub)
    compare_parser(sub)
    resume.add_arguments(overhead.add_parser(sub))
    fairness.add_parser(sub)
    kvrouting.add_parser(sub)
    replicas.add_parser(sub)
    synthetic.add_parser(sub)
    vllm_check.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
