"""``python -m entrypoint``: render, check and serve a profile; manage the compile cache.

render      print the exact vllm command and environment (secrets masked)
check       run the preflight only (exit 1 on errors); --host: as the TPU/GPU host sees the
            profile before `make up` (compose secrets on the host, not the container's cache dirs)
serve       preflight, seed the compile cache, then run vLLM in its own process group
cache save  write the hot compile cache back to the persistent copy (called by the warm-up)
cache seed  fill the hot dir from the persistent copy (serve does this itself)
model       build the tiny Gemma 4 for the embedded CPU engine (idempotent)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from entrypoint import cache, preflight, tinymodel
from entrypoint.process import run_group
from entrypoint.render import render
from env.settings import CacheSettings, EngineEnv, EngineSettings, profile_path


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
    cache_settings = CacheSettings.load(args.profile)
    if engine.platform == "cpu":
        _prepare_cpu(engine, cache_settings)
    if not _print_findings(preflight.run(args.profile)):
        return 1
    runtime = EngineEnv.load(args.profile)
    print(cache.seed(cache.CacheLayout.for_settings(engine, cache_settings)), file=sys.stderr)
    rendered = render(engine, runtime, cache_settings, vllm=_vllm_executable())
    print("entrypoint: " + " ".join(rendered.argv), file=sys.stderr, flush=True)
    return run_group(rendered.argv, {**os.environ, **rendered.env})


def cmd_cache(args: argparse.Namespace) -> int:
    engine, cache_settings = EngineSettings.load(args.profile), CacheSettings.load(args.profile)
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

    add("render", cmd_render, "print the vllm command and environment")
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
    add("serve", cmd_serve, "preflight, seed cache, run vLLM")
    add("cache", cmd_cache, "compile cache").add_argument("action", choices=["save", "seed"])
    m = add("model", cmd_model, "build the tiny CPU model")
    m.add_argument("--out", type=Path, default=None, help="default: CACHE_TINY_MODEL_DIR")
    m.add_argument("--force", action="store_true", help="rebuild even if up to date")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except FileNotFoundError as exc:
        print(f"entrypoint: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
