"""``make up``: start the Compose stack; wait until /health is 200 and every replica is ready.

    python3 -m deploy.up --profile-file env/cpu.env [--timeout S] -- docker compose -p ... -f ...

Why a program and not ``docker compose up --wait``: readiness of this stack is the *gateway's*
``/health`` (engine healthy AND warm-up passed for this engine instance), which no container
healthcheck expresses; and when it fails, the useful output is the reason (the gateway's 503
JSON, the engine's exit code or restart count) plus the engine's last log lines, not a spinner.

It fails fast instead of waiting out the whole bound when an engine container exits, restarts
or turns unhealthy (every replica's: ``engine``, ``engine-1`` .. with ``ENGINE_REPLICAS`` > 1),
or when the gateway reports ``warmup_failed``. Standard library only: it runs
on a TPU VM host that has Docker and Python but not this project's venv.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from deploy.profile import Profile
from protocol.engine_errors import engine_message

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class StackFailed(Exception):
    """The stack cannot become ready; the message is the reason shown to the user."""


@dataclass
class Health:
    """One probe of the gateway's /health: HTTP status (0: no answer) and its reason text, and
    the replicas not ready yet (``name state``): the gateway answers 200 as soon as
    ``GATEWAY_MIN_READY_REPLICAS`` are ready, and ``make up`` waits for all of them."""

    status: int
    reason: str
    waiting: tuple[str, ...] = ()


def _not_ready(doc: object) -> tuple[str, ...]:
    replicas = doc.get("replicas") if isinstance(doc, dict) else None
    if not isinstance(replicas, list):
        return ()
    return tuple(
        f"{r.get('name')} {r.get('state')}"
        for r in replicas
        if isinstance(r, dict) and r.get("state") != "ready"
    )


def probe(url: str, timeout_s: float = 5.0) -> Health:
    """GET ``url``; a 503 body's ``status`` field (engine_down, warming_up, ...) is the reason;
    a 200 with replicas still coming says how many are ready."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            try:
                doc = json.loads(resp.read())
            except ValueError:
                doc = None
            waiting = _not_ready(doc)
            if not waiting:
                return Health(resp.status, "ok")
            total = len(doc["replicas"])  # type: ignore[index]
            ready = f"{total - len(waiting)}/{total} replicas ready"
            return Health(resp.status, f"{ready}; " + ", ".join(waiting), waiting)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            doc = json.loads(body)
            status = doc.get("status")
        except (ValueError, AttributeError):
            doc, status = None, None
        reason = str(status) if status else engine_message(body, 200)
        return Health(exc.code, reason, _not_ready(doc))
    except (OSError, urllib.error.URLError) as exc:
        return Health(0, f"no answer ({getattr(exc, 'reason', exc)})")


class Compose:
    """The compose command prefix (``docker compose -p P --env-file F -f ... -f ...``)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def container_state(self, service: str) -> dict[str, object] | None:
        """``docker inspect`` State of the service's container, with RestartCount; None if none."""
        ids = self.run("ps", "-a", "-q", service, timeout=30).stdout.split()
        if not ids:
            return None
        out = subprocess.run(
            ["docker", "inspect", "--format", "{{json .State}}|{{.RestartCount}}", ids[0]],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
        if "|" not in out:
            return None
        state_json, _, restarts = out.rpartition("|")
        state: dict[str, object] = json.loads(state_json)
        state["RestartCount"] = int(restarts or 0)
        return state

    def logs(self, service: str, tail: int) -> str:
        """The service's last lines, without the terminal escapes compose adds to them."""
        out = self.run("logs", "--no-color", "--tail", str(tail), service, timeout=60).stdout
        return _ANSI.sub("", out)


def engine_problem(state: dict[str, object] | None) -> str | None:
    """Why the engine container will not become ready, or None while it still may."""
    if state is None:
        return None
    status = state.get("Status")
    health = (state.get("Health") or {}).get("Status")  # type: ignore[union-attr]
    if status in ("exited", "dead"):
        return f"engine container {status} with code {state.get('ExitCode')}"
    if int(state.get("RestartCount", 0)) > 0:  # type: ignore[call-overload]
        return (
            f"engine container restarted {state['RestartCount']} time(s) "
            f"(last exit code {state.get('ExitCode')})"
        )
    if health == "unhealthy":
        return "engine container is unhealthy (its /health stopped answering)"
    return None


def engine_services(profile: Profile) -> list[str]:
    """The compose services of the profile's engine replicas (deploy/replicas.py names them)."""
    n = max(1, int(profile.number("ENGINE_REPLICAS", 1)))
    return ["engine"] + [f"engine-{i}" for i in range(1, n)]


def engines_problem(compose: Compose, services: list[str]) -> tuple[str, str] | None:
    """The first engine service that will not become ready, with why; None while all may."""
    for service in services:
        problem = engine_problem(compose.container_state(service))
        if problem:
            named = problem if service == "engine" else problem.replace("engine", service, 1)
            return service, named
    return None


class EngineFailed(StackFailed):
    """An engine container failed; ``service`` names it (its log is the useful one)."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service


def _check_engines(compose: Compose, services: list[str]) -> None:
    found = engines_problem(compose, services)
    if found:
        raise EngineFailed(*found)


def bring_up(
    compose: Compose, deadline: float, poll_s: float = 5.0, services: list[str] | None = None
) -> None:
    """``compose up -d``, watching the engine meanwhile.

    ``up -d`` itself blocks until the engine is healthy (the warm-up depends on it), which on a
    cold TPU start is tens of minutes; the watcher turns a crashing engine into an error now.
    """
    services = services or ["engine"]
    proc = subprocess.Popen([*compose.argv, "up", "-d", "--remove-orphans"])
    try:
        while proc.poll() is None:
            _check_engines(compose, services)
            if time.monotonic() > deadline:
                raise StackFailed("timed out while `docker compose up` waited for the engine")
            time.sleep(poll_s)
        if proc.returncode != 0:
            _check_engines(compose, services)
            raise StackFailed(f"`docker compose up` exited {proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def wait_ready(
    compose: Compose,
    url: str,
    deadline: float,
    poll_s: float = 2.0,
    services: list[str] | None = None,
) -> float:
    """Poll the gateway's /health until 200 with every replica ready; print each change of
    reason. Returns seconds."""
    start = time.monotonic()
    last = ""
    while True:
        health = probe(url)
        if health.status == 200 and not health.waiting:
            return time.monotonic() - start
        if health.reason != last:
            print(f"up: {url} -> {health.status or '---'} {health.reason}", flush=True)
            last = health.reason
        if health.reason.startswith("warmup_failed"):
            raise StackFailed(f"warm-up failed: {health.reason}")
        failed = [w for w in health.waiting if " warmup_failed" in w]
        if failed:
            raise StackFailed(f"warm-up failed: {', '.join(failed)}")
        _check_engines(compose, services or ["engine"])
        if time.monotonic() > deadline:
            raise StackFailed(f"timed out; gateway /health still {health.status} {health.reason}")
        time.sleep(poll_s)


def _threaded_tail(compose: Compose, service: str, tail: int) -> str:
    """Logs of one service, bounded in time even if the daemon is slow."""
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(compose.logs(service, tail)))
    worker.start()
    worker.join(60)
    return result[0] if result else "(logs unavailable)"


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    split = args_in.index("--") if "--" in args_in else len(args_in)
    p = argparse.ArgumentParser(prog="python3 -m deploy.up", description=__doc__.split("\n")[0])
    p.add_argument("--profile-file", required=True, help="the profile compose was given")
    p.add_argument("--timeout", type=float, default=0, help="seconds; 0: ready timeout + budget")
    p.add_argument("--tail", type=int, default=60, help="engine log lines shown on failure")
    args = p.parse_args(args_in[:split])
    compose = Compose(args_in[split + 1 :])
    if not compose.argv:
        p.error("give the compose command after --")

    profile = Profile(args.profile_file)
    missing = [
        f"{name}: {path}" for name, path in profile.secret_files().items() if not path.is_file()
    ]
    if missing:
        print("up: missing secret file(s), see docs/deploy.md:\n  " + "\n  ".join(missing))
        return 2
    timeout = args.timeout or profile.up_timeout_s()
    url = f"{profile.gateway_url}/health"
    start = time.monotonic()
    deadline = start + timeout
    print(
        f"up: profile {profile.path} ({profile.platform}), waiting up to {timeout:.0f} s for {url}"
    )
    engines = engine_services(profile)
    try:
        bring_up(compose, deadline, services=engines)
        what = "engine" if len(engines) == 1 else f"{len(engines)} engines"
        print(f"up: {what} healthy after {time.monotonic() - start:.0f} s; waiting for warm-up")
        wait_ready(compose, url, deadline, services=engines)
    except StackFailed as exc:
        failed = exc.service if isinstance(exc, EngineFailed) else "engine"
        print(f"up: FAILED after {time.monotonic() - start:.0f} s: {exc}", file=sys.stderr)
        print(f"up: last {args.tail} {failed} log lines:", file=sys.stderr)
        print(_threaded_tail(compose, failed, args.tail), file=sys.stderr)
        warm = _threaded_tail(compose, "warmup", 15)
        if warm.strip():
            print("up: last warm-up log lines:\n" + warm, file=sys.stderr)
        return 1
    print(f"up: stack ready in {time.monotonic() - start:.0f} s: {profile.gateway_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
