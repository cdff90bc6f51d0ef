"""``python -m entrypoint``: render, check and serve a profile; manage the compile cache.

render      print the exact vllm command and environment (secrets masked); --replica I: replica
            I of an ENGINE_REPLICAS profile (its port, hot cache dir, TPU chips)
check       run the preflight only (exit 1 on errors); --host: as the TPU/GPU host sees the
            profile before `make up` (compose secrets on the host, not the container's cache dirs)
serve       preflight, seed the compile cache, then run vLLM in its own process group;
            --replica I (default 0) serves replica I on ENGINE_PORT + I (entrypoint/replica.py)
cache save  write the hot compile cache back to the persistent copy (called by the warm-up;
            --replica I: that replica's hot dir)
cache seed  fill the hot dir from the persistent copy (serve does this itself)
model       build the tiny Gemma 4 for the embedded CPU engine (idempotent)
capacity    the KV-cache capacity model for the profile (tokens, max concurrency at max-model-len,
            the figures vLLM logs at start); TPU profiles also print the seed blog's 12B v6e-4
            layout next to the model's readings of it; --all: the per-chip HBM budget
            (weights, compiled-program headroom, KV) of every TPU profile
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from entrypoint import cache, capacity, preflight, replica, tinymodel
from entrypoint.process import run_group, stop_grace_s
from entrypoint.render import render
from env.settings import (
    ENV_DIR,
    CacheSettings,
    EngineEnv,
    EngineSettings,
    OpsSettings,
    profile_path,
)


def _vllm_executable() -> str:
    """``vllm`` on PATH (the upstream images), else the one beside this interpreter (a venv)."""
    beside = Path(sys.executable).with_name("vllm")
    return shutil.which("vllm") or str(beside)


def _print_findings(findings: list[preflight.Finding]) -> bool:
    for finding in findings:
        print(finding, file=sys.stderr)
    bad = preflight.errors(findings)
    if bad:
        print(f"preflight: {len(bad)} error(s); the engine was not started", file=sys.stderr)
    return not bad


def cmd_render(args: argparse.Namespace) -> int:
    rendered = render(
        EngineSettings.load(args.profile),
        EngineEnv.load(args.profile),
        CacheSettings.load(args.profile),
        replica=args.replica,
    )
    print(rendered.shell())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    where = "host" if args.host else "container"
    ok = _print_findings(
        preflight.run(args.profile, where=where, project_dir=args.project_dir.resolve())
    )
    if ok:
        print(f"preflight: {profile_path(args.profile)} OK")
    return 0 if ok else 1


def _prepare_cpu(engine: EngineSettings, cache_settings: CacheSettings) -> None:
    """Local dev conveniences: create cache dirs, build the tiny model if the profile serves it."""
    for path in (cache_settings.hot_dir, cache_settings.hf_dir, cache_settings.persist_dir):
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
    if Path(engine.model).resolve() == cache_settings.tiny_model_dir.resolve():
        tinymodel.build(cache_settings.tiny_model_dir)


def cmd_serve(args: argparse.Namespace) -> int:
    engine = EngineSettings.load(args.profile)
    profile_cache = CacheSettings.load(args.profile)
    mine, cache_settings = replica.for_replica(engine, profile_cache, args.replica)
    if engine.platform == "cpu":
        _prepare_cpu(engine, cache_settings)
    if not _print_findings(preflight.run(args.profile)):
        return 1
    for line in replica.prestart(engine, args.replica):  # stale libtpu lock, staggered start
        print(f"entrypoint: {line}", file=sys.stderr, flush=True)
    runtime = EngineEnv.load(args.profile)
    seeded = cache.seed(cache.CacheLayout.for_settings(mine, cache_settings))
    print(seeded, file=sys.stderr)
    rendered = render(engine, runtime, profile_cache, vllm=_vllm_executable(), replica=args.replica)
    command = "entrypoint: " + " ".join(rendered.argv)
    if engine.replicas > 1:
        pins = {k: v for k, v in rendered.env.items() if k.startswith("TPU_")}
        where = f" on TPU chips {pins['TPU_VISIBLE_CHIPS']}" if pins else ""
        command = f"entrypoint: replica {args.replica} of {engine.replicas}{where}\n{command}"
    print(command, file=sys.stderr, flush=True)
    log = replica.engine_log_path(
        OpsSettings.load(args.profile), cache_settings, engine, args.replica
    )
    env = {**os.environ, **rendered.env}
    cores = replica.bound_cores(env.get("VLLM_CPU_OMP_THREADS_BIND"))
    if cores and hasattr(os, "sched_setaffinity"):  # inherited by vLLM (replica.bound_cores)
        allowed = cores & os.sched_getaffinity(0)
        if allowed:
            os.sched_setaffinity(0, allowed)
            listed = ",".join(map(str, sorted(allowed)))
            print(f"entrypoint: vLLM confined to cores {listed}", file=sys.stderr, flush=True)
    header = f"entrypoint: {seeded}\n{command}\n"
    return run_group(
        rendered.argv,
        env,
        grace_s=stop_grace_s(engine.shutdown_timeout_s),
        log_path=log,
        log_header=header,
    )


def cmd_cache(args: argparse.Namespace) -> int:
    engine, cache_settings = replica.for_replica(
        EngineSettings.load(args.profile), CacheSettings.load(args.profile), args.replica
    )
    if args.action == "save":
        # The engine's recorded key: the warm-up image that runs this has no vLLM to compute it.
        print(cache.save(cache.CacheLayout.active(engine, cache_settings)))
    else:
        print(cache.seed(cache.CacheLayout.for_settings(engine, cache_settings)))
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    out = args.out or CacheSettings.load(args.profile).tiny_model_dir
    print(f"tiny Gemma 4 model: {tinymodel.build(Path(out), force=args.force)}")
    return 0


def capacity_report(profile: str | None, memory_gib: float | None = None) -> dict[str, object]:
    """The capacity model's figures for a profile (``python -m entrypoint capacity``)."""
    engine, runtime = EngineSettings.load(profile), EngineEnv.load(profile)
    lay = capacity.layout(engine, runtime, memory_gib)
    out: dict[str, object] = {
        "profile": str(profile_path(profile)),
        "platform": engine.platform,
        "model": engine.model,
        "model_estimate": lay.as_dict() if lay else None,
    }
    if lay is None:
        out["why_no_estimate"] = (
            "unknown model geometry"
            if capacity.geometry(engine) is None
            else "memory unknown on this platform: pass --memory-gib"
        )
    budget = capacity.chip_budget(engine, runtime, profile_path(profile).stem)
    if budget is not None:
        out["chip_budget"] = budget.as_dict()
    if engine.platform == "tpu":
        out["seed_12b_v6e4_reported"] = capacity.SEED_12B_V6E4
        out["seed_12b_v6e4_model"] = capacity.seed_comparison()
    return out


def chip_budgets() -> list[capacity.ChipBudget]:
    """The per-chip budget of every TPU profile in env/ (``capacity --all``)."""
    out = []
    for path in sorted(ENV_DIR.glob("*.env")):
        budget = capacity.chip_budget(EngineSettings.load(path), EngineEnv.load(path), path.stem)
        if budget is not None:
            out.append(budget)
    return out


def budget_table(budgets: list[capacity.ChipBudget]) -> str:
    """Markdown: one row per TPU profile, GiB per chip (the table in env/README.md)."""
    rows = [
        "| profile | chips | path | util | weights | programs need | left for programs "
        "| KV | KV tokens | fits |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b in budgets:
        rows.append(
            f"| `{b.profile}` | {b.chips} | {b.model_impl} | {b.utilization:.2f} | "
            f"{b.weights_gib:.2f} | {b.program_headroom_gib:.2f} | {b.reserved_gib:.2f} | "
            f"{b.kv_gib:.2f} | {b.kv_tokens or 0:,} | {'yes' if b.problem is None else 'NO'} |"
        )
    return "\n".join(rows)


def cmd_capacity(args: argparse.Namespace) -> int:
    if args.all:
        budgets = chip_budgets()
        if args.json:
            print(json.dumps([b.as_dict() for b in budgets], indent=1))
        else:
            print(f"per v6e chip (GiB of {capacity.V6E_HBM_REPORTED_BYTES / capacity.GIB:.2f}):")
            print(budget_table(budgets))
            for b in budgets:
                if b.problem:
                    print(f"{b.profile}: {b.problem}")
        return 1 if any(b.problem for b in budgets) else 0
    report = capacity_report(args.profile, args.memory_gib)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    est = report["model_estimate"]
    print(f"profile {report['profile']} ({report['platform']}, {report['model']})")
    if isinstance(est, dict):
        print(
            f"  model: KV cache size {est['kv_cache_tokens']:,} tokens, maximum concurrency "
            f"{est['max_concurrency']:.2f}x at {est['max_model_len']:,} tokens per request"
        )
        print(
            f"  {est['num_blocks']:,} blocks of {est['bytes_per_block']:,} bytes per worker, "
            f"{est['blocks_per_request']:,} blocks per full-length request; {est['memory_source']}"
        )
    else:
        print(f"  no estimate: {report['why_no_estimate']}")
    chip = report.get("chip_budget")
    if isinstance(chip, dict):
        print(
            f"  per chip: {chip['hbm_gib']} GiB HBM x {chip['utilization']}: weights "
            f"{chip['weights_gib']} GiB, KV {chip['kv_gib']} GiB; compiled programs need "
            f"~{chip['program_headroom_gib']} GiB, {chip['reserved_gib']} GiB left for them"
        )
        if chip["problem"]:
            print(f"  DOES NOT FIT: {chip['problem']}")
    if "seed_12b_v6e4_model" in report:
        seed = capacity.SEED_12B_V6E4
        print(
            f"  seed blog, Gemma 4 12B on v6e-4 at {seed['max_model_len']:,} tokens with "
            f"{seed['available_gib']} GiB for KV: {seed['kv_cache_tokens']:,} tokens, "
            f"{seed['max_concurrency']}x; the model on the same memory:"
        )
        for row in report["seed_12b_v6e4_model"]:  # type: ignore[attr-defined]
            alloc = (
                "hybrid (sliding-window savings)"
                if row["hybrid_allocator"]
                else "every layer at full context"
            )
            print(
                f"    {row['kv_cache_dtype']:>4} KV, {alloc:<32} {row['kv_cache_tokens']:>10,} "
                f"tokens {row['max_concurrency']:>6.2f}x ({row['vs_seed_tokens_pct']:+.2f}% vs seed)"
            )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m entrypoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        sp = sub.add_parser(name, help=help_)
        sp.add_argument(
            "--profile", default=None, help="env/<name>.env, a name, or $PROFILE (default cpu)"
        )
        sp.set_defaults(fn=fn)
        return sp

    def add_replica(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--replica",
            type=int,
            default=0,
            metavar="I",
            help="replica I of the profile's ENGINE_REPLICAS (0-based; default 0): port "
            "ENGINE_PORT + I, its own hot compile-cache dir, on TPU its own chips",
        )
        return sp

    add_replica(add("render", cmd_render, "print the vllm command and environment"))
    c = add("check", cmd_check, "run the preflight only")
    c.add_argument(
        "--host",
        action="store_true",
        help="check as the host sees the profile before `make up` (TPU/GPU: the compose secrets "
        "instead of the container's cache dirs); `make check` passes it",
    )
    c.add_argument(
        "--project-dir",
        type=Path,
        default=preflight.PROJECT_DIR,
        help="compose project directory that relative secret paths resolve against "
        "(default: the repository root)",
    )
    add_replica(add("serve", cmd_serve, "preflight, seed cache, run vLLM"))
    add_replica(add("cache", cmd_cache, "compile cache")).add_argument(
        "action", choices=["save", "seed"]
    )
    m = add("model", cmd_model, "build the tiny CPU model")
    m.add_argument("--out", type=Path, default=None, help="default: CACHE_TINY_MODEL_DIR")
    m.add_argument("--force", action="store_true", help="rebuild even if up to date")
    cap = add("capacity", cmd_capacity, "KV-cache capacity model (tokens, max concurrency)")
    cap.add_argument(
        "--memory-gib",
        type=float,
        default=None,
        help="KV-cache memory in GiB over all workers (default: the profile's CPU KV space, or "
        "the TPU HBM estimate; required on GPU)",
    )
    cap.add_argument("--json", action="store_true", help="machine-readable output")
    cap.add_argument(
        "--all",
        action="store_true",
        help="the per-chip HBM budget (weights, compiled-program headroom, KV) of every TPU "
        "profile in env/; exit 1 if one cannot fit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, replica.ReplicaError) as exc:
        print(f"entrypoint: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
