"""``python -m warmup --profile P [--report PATH] [--no-notify] [--watch] [--plan]``.

Exit codes: 0 passed; 1 a step failed (the last stderr line names the step, the HTTP status and
the engine's message); 2 the engine never became ready or kept restarting; 3 the warm-up ran
but the gateway could not be told (it stays 503).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from env.settings import profile_path
from warmup.progress import make_reporter
from warmup.sidecar import Sidecar


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
    return p.parse_args(argv)


async def watch_until_terminated(sidecar: Sidecar) -> None:
    """``--watch`` until SIGTERM (compose stop): a clean exit 0, not a traceback."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await sidecar.watch()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = str(profile_path(args.profile))
    if not Path(profile).is_file():
        print(f"warmup: profile not found: {profile}", file=sys.stderr)
        return 2
    reporter = make_reporter(force_plain=args.plain)
    sidecar = Sidecar.load(profile, reporter, args.report, notify=not args.no_notify)
    if args.plan:
        plan = sidecar.plan()
        print(json.dumps({**plan.summary(), "steps": [s.to_dict() for s in plan.steps]}, indent=2))
        return 0
    try:
        if args.watch:
            asyncio.run(watch_until_terminated(sidecar))
            return 0
        outcome = asyncio.run(sidecar.run_once())
    except KeyboardInterrupt:
        return 130
    if outcome.status == "gateway_error":
        print(f"warmup: {outcome.result}, but {outcome.gateway_error}", file=sys.stderr)
    elif outcome.status != "passed":
        print(f"warmup: {outcome.status}: {outcome.message}", file=sys.stderr)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
