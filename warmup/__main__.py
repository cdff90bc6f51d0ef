"""``python -m warmup --profile P [--report PATH] [--no-notify] [--watch] [--plan] [--parallel N]``.

Warms every replica (``warmup/fleet.py``: ``WARMUP_ENGINE_URL``, else the gateway's upstream
list, else ``ENGINE_REPLICAS`` engines), each reported to the gateway for its own instance.
With ``WARMUP_STATUS_PORT`` > 0 it also serves ``/ready`` and ``/livez`` (``warmup/status.py``).

Exit codes (with several replicas, the highest of theirs): 0 passed; 1 a step failed (the last
stderr line names the step, the HTTP status and the engine's message); 2 the engine never became
ready or kept restarting, or the replica list is unusable; 3 the warm-up ran but the gateway
could not be told (it stays 503).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from env.replicas import UpstreamError
from env.settings import WarmupSettings, profile_path
from warmup.fleet import Fleet, worst
from warmup.progress import make_reporter
from warmup.sidecar import Outcome, Sidecar


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m warmup", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default=None, help="env/<name>.env, a name (cpu) or $PROFILE")
    p.add_argument(
        "--report", type=Path, default=None, help="JSON report path (WARMUP_REPORT_PATH)"
    )
    p.add_argument("--no-notify", action="store_true", help="do not talk to the gateway")
    p.add_argument("--watch", action="store_true", help="sidecar mode: re-warm every new engine")
    p.add_argument("--plan", action="store_true", help="print the derived plan as JSON and exit")
    p.add_argument("--plain", action="store_true", help="plain log lines even on a terminal")
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="warm at most N replicas at once (default 1: see warmup/fleet.py for why)",
    )
    args = p.parse_args(argv)
    if args.parallel < 1:
        p.error("--parallel must be at least 1")
    return args


async def watch_until_terminated(fleet: Fleet) -> None:
    """``--watch`` until SIGTERM (compose stop): a clean exit 0, not a traceback."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await fleet.watch()


async def run(fleet: Fleet, watch: bool, status: WarmupSettings) -> list[Outcome]:
    """One-shot or watch, with the status server around it when ``WARMUP_STATUS_PORT`` > 0."""
    server = None
    if status.status_port > 0:
        server = await fleet.serve_status(status.status_host, status.status_port)
        where = f"http://{status.status_host}:{status.status_port}"
        fleet.sidecars[0].reporter.log(f"status server on {where} (/ready, /livez)")
    try:
        if watch:
            await watch_until_terminated(fleet)
            return []
        return await fleet.run_once()
    finally:
        if server is not None:
            await server.close()


def explain(outcome: Outcome, who: str = "") -> None:
    """The one stderr line for an outcome that is not a clean pass."""
    if outcome.status == "gateway_error":
        print(f"warmup: {who}{outcome.result}, but {outcome.gateway_error}", file=sys.stderr)
    elif outcome.status != "passed":
        print(f"warmup: {who}{outcome.status}: {outcome.message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = str(profile_path(args.profile))
    if not Path(profile).is_file():
        print(f"warmup: profile not found: {profile}", file=sys.stderr)
        return 2
    if args.plan:
        sidecar = Sidecar.load(profile, make_reporter(True), args.report, notify=False)
        plan = sidecar.plan()
        print(json.dumps({**plan.summary(), "steps": [s.to_dict() for s in plan.steps]}, indent=2))
        return 0
    try:
        fleet = Fleet.load(
            profile, args.report, notify=not args.no_notify, force_plain=args.plain,
            parallel=args.parallel, watch=args.watch,
        )  # fmt: skip
    except UpstreamError as exc:
        for problem in exc.problems:
            print(f"warmup: {problem}", file=sys.stderr)
        return 2
    try:
        outcomes = asyncio.run(run(fleet, args.watch, WarmupSettings.load(profile)))
    except KeyboardInterrupt:
        return 130
    if args.watch:
        return 0
    if len(outcomes) == 1:
        explain(outcomes[0])
        return outcomes[0].exit_code
    for sidecar, outcome in zip(fleet.sidecars, outcomes, strict=True):
        explain(outcome, f"{sidecar.name}: ")
    summary = ", ".join(
        f"{s.name} {o.status}" for s, o in zip(fleet.sidecars, outcomes, strict=True)
    )
    code = worst(outcomes).exit_code
    print(f"warmup: {len(outcomes)} replicas: {summary} (exit {code})", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
