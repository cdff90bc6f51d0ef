"""``make drain REPLICA=...`` and ``make rolling-restart``: take replicas out one at a time.

    python -m deploy.rolling [--profile P] [--gateway-url URL] [--token-file F] drain NAME
    python -m deploy.rolling ... undrain NAME
    python -m deploy.rolling ... restart [--restart dev|--restart-cmd 'docker compose ... restart {service}']

Everything goes through the gateway's internal replica endpoints (internal token as a bearer,
``GATEWAY_INTERNAL_TOKEN_FILE``): ``GET /internal/replicas`` (each replica's name, state, engine
instance, draining flag, in-flight count; the ready count and ``GATEWAY_MIN_READY_REPLICAS``),
``POST /internal/replicas/{name}/drain`` and ``.../undrain``.

Drain: no new request goes to the replica; then wait (polling) until its in-flight count is 0.
The replica is then safe to stop.

Rolling restart, for each replica in the gateway's order: check that the *other* replicas keep
at least ``min_ready`` ready (refused up front when the stack simply has too few replicas:
restarting any one would go below the minimum), drain it, run the restart, wait until the
gateway reports it ``ready`` with a **new** engine instance (so restarted *and* warmed: the
gateway serves an instance only after its warm-up passed), undrain it, next. Any failure stops
the run with one line and undrains the replica it was on (a drained replica that is not
restarted would otherwise stay out of rotation); exit 1.

The restart itself is a command template (``{name}``, ``{host}``, ``{port}``, ``{index}``,
``{service}``: the compose service of replica ``index``, ``deploy.replicas.service_name``) or
``dev``: the ``make dev`` stack's own restart (``deploy.dev.restart_replica``: SIGTERM to that
replica's process group; dev's restart policy starts it again and its ``--watch`` warm-up warms
it). ``rolling_restart`` is a function too, for tests that drive it under load.

Every phase prints one line with the time since the start.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

from env.settings import EngineEnv, GatewaySettings, WarmupSettings, profile_path

POLL_S = 0.5


class RollingError(Exception):
    """A drain or restart that cannot go on; the message is the one line to print."""


@dataclass(frozen=True)
class Replica:
    """One row of ``GET /internal/replicas``."""

    name: str
    url: str
    state: str
    engine_instance: str | None
    draining: bool
    inflight: int

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Replica:
        return cls(
            name=str(doc["name"]),
            url=str(doc.get("url") or ""),
            state=str(doc.get("state") or "unknown"),
            engine_instance=doc.get("engine_instance"),
            draining=bool(doc.get("draining")),
            inflight=int(doc.get("inflight") or 0),
        )

    @property
    def ready(self) -> bool:
        return self.state == "ready"


@dataclass(frozen=True)
class Snapshot:
    replicas: list[Replica]
    ready: int
    min_ready: int

    def get(self, name: str) -> Replica:
        for replica in self.replicas:
            if replica.name == name:
                return replica
        known = ", ".join(r.name for r in self.replicas) or "none"
        raise RollingError(f"the gateway has no replica {name!r} (it has: {known})")


class Internal:
    """Client of the gateway's internal replica endpoints."""

    def __init__(self, url: str, token_file: Path, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token_file = token_file
        self.timeout_s = timeout_s

    def _token(self) -> str:
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise RollingError(f"internal token file {self.token_file}: {exc.strerror}") from None
        if not token:
            raise RollingError(f"internal token file {self.token_file} is empty")
        return token

    def _call(self, method: str, path: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token()}"}
        try:
            resp = httpx.request(
                method, f"{self.url}{path}", headers=headers, timeout=self.timeout_s
            )
        except httpx.HTTPError as exc:
            raise RollingError(f"gateway {self.url} unreachable: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise RollingError(
                f"gateway {method} {path}: HTTP {resp.status_code}: {resp.text[:300].strip()}"
            )
        return dict(resp.json())

    def snapshot(self) -> Snapshot:
        doc = self._call("GET", "/internal/replicas")
        replicas = [Replica.from_json(r) for r in doc.get("replicas") or []]
        ready = int(doc.get("ready", sum(r.ready for r in replicas)))
        return Snapshot(replicas, ready, int(doc.get("min_ready") or 1))

    def drain(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/internal/replicas/{quote(name, safe=':')}/drain")

    def undrain(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/internal/replicas/{quote(name, safe=':')}/undrain")


class Gateway(Protocol):
    """What the orchestration needs from the gateway (``Internal``, or a fake in tests)."""

    def snapshot(self) -> Snapshot: ...
    def drain(self, name: str) -> dict[str, Any]: ...
    def undrain(self, name: str) -> dict[str, Any]: ...


Restart = Callable[[Replica, int], None]


@dataclass
class Clock:
    """Time and output, injectable: ``now`` (monotonic), ``sleep`` and ``out`` (one line)."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    out: Callable[[str], None] = print
    start: float | None = None

    def say(self, message: str) -> None:
        if self.start is None:
            self.start = self.now()
        print_line = f"rolling: [{self.now() - self.start:7.1f} s] {message}"
        self.out(print_line)


def drain(gw: Gateway, name: str, timeout_s: float, clock: Clock, poll_s: float = POLL_S) -> float:
    """Drain ``name`` and wait until its in-flight count is 0; returns the seconds it took."""
    gw.snapshot().get(name)  # a clear line for an unknown name, before anything changes
    began = clock.now()
    answer = gw.drain(name)
    clock.say(f"{name}: draining ({answer.get('inflight', '?')} in flight)")
    while True:
        replica = gw.snapshot().get(name)
        waited = clock.now() - began
        if replica.inflight == 0:
            clock.say(f"{name}: drained after {waited:.1f} s")
            return waited
        if waited >= timeout_s:
            raise RollingError(
                f"{name}: still {replica.inflight} in flight after {timeout_s:g} s of draining"
            )
        clock.sleep(poll_s)


def _wait_others_ready(
    gw: Gateway, name: str, timeout_s: float, clock: Clock, poll_s: float
) -> Snapshot:
    """Wait until the replicas other than ``name`` keep ``min_ready`` ready without it."""
    began, said = clock.now(), False
    while True:
        snap = gw.snapshot()
        others = sum(r.ready and not r.draining for r in snap.replicas if r.name != name)
        if others >= snap.min_ready:
            return snap
        if clock.now() - began >= timeout_s:
            raise RollingError(
                f"{name}: only {others} other replica(s) ready after {timeout_s:g} s; restarting "
                f"it would go below GATEWAY_MIN_READY_REPLICAS={snap.min_ready}"
            )
        if not said:
            clock.say(f"{name}: waiting for {snap.min_ready} other replica(s) to be ready")
            said = True
        clock.sleep(poll_s)


def _wait_new_ready(
    gw: Gateway, name: str, old: str | None, timeout_s: float, clock: Clock, poll_s: float
) -> Replica:
    began, last = clock.now(), None
    while True:
        replica = gw.snapshot().get(name)
        fresh = replica.engine_instance is not None and replica.engine_instance != old
        if fresh and replica.ready:
            return replica
        state = f"{replica.state} ({'new' if fresh else 'old'} instance)"
        if state != last:
            clock.say(f"{name}: {state}")
            last = state
        if clock.now() - began >= timeout_s:
            raise RollingError(
                f"{name}: not ready with a new engine instance after {timeout_s:g} s "
                f"(state {replica.state}, instance {replica.engine_instance})"
            )
        clock.sleep(poll_s)


def rolling_restart(
    gw: Gateway,
    restart: Restart,
    *,
    drain_timeout_s: float,
    ready_timeout_s: float,
    clock: Clock | None = None,
    poll_s: float = POLL_S,
    only: list[str] | None = None,
) -> list[str]:
    """Restart the replicas (all, or ``only``) one at a time; returns the names restarted.

    ``restart(replica, index)`` restarts one (``index``: its position in the gateway's list).
    """
    clock = clock or Clock()
    snap = gw.snapshot()
    if len(snap.replicas) - 1 < snap.min_ready:
        raise RollingError(
            f"refusing: {len(snap.replicas)} replica(s) and GATEWAY_MIN_READY_REPLICAS="
            f"{snap.min_ready}: restarting any one would leave fewer than {snap.min_ready} ready "
            "(add a replica, or restart the stack instead)"
        )
    names = [r.name for r in snap.replicas]
    for name in only or []:
        snap.get(name)
    todo = [n for n in names if not only or n in only]
    clock.say(f"{len(todo)} replica(s) to restart, one at a time (min ready {snap.min_ready})")
    for position, name in enumerate(todo, 1):
        index = names.index(name)
        tag = f"{name} ({position}/{len(todo)})"
        _wait_others_ready(gw, name, ready_timeout_s, clock, poll_s)
        old = gw.snapshot().get(name)
        began = clock.now()
        try:  # from the drain on, the replica is undrained whatever happens
            drain(gw, name, drain_timeout_s, clock, poll_s)
            clock.say(f"{tag}: restarting (instance {old.engine_instance})")
            restart(old, index)
            new = _wait_new_ready(gw, name, old.engine_instance, ready_timeout_s, clock, poll_s)
            clock.say(f"{tag}: ready, new instance {new.engine_instance}")
        finally:
            try:
                gw.undrain(name)
                clock.say(f"{tag}: undrained ({clock.now() - began:.1f} s for this replica)")
            except RollingError as exc:
                clock.say(f"{tag}: WARNING: could not undrain: {exc}")
    clock.say(f"done: {len(todo)} replica(s) restarted")
    return todo


# -- restarts -------------------------------------------------------------------------------------


def command_restart(template: str, timeout_s: float = 600.0) -> Restart:
    """A restart that runs ``template`` (shell-split, then each word formatted)."""
    words = shlex.split(template)
    if not words:
        raise RollingError("--restart-cmd is empty")

    def run(replica: Replica, index: int) -> None:
        parts = urlsplit(replica.url) if replica.url else None
        host, _, port = replica.name.rpartition(":")
        fields = {
            "name": replica.name,
            "host": parts.hostname if parts and parts.hostname else host,
            "port": str(parts.port) if parts and parts.port else port,
            "index": str(index),
            "service": _service(index),
        }
        argv = [w.format(**fields) for w in words]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RollingError(f"restart command {shlex.join(argv)} did not run: {exc}") from None
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
            raise RollingError(
                f"restart command {shlex.join(argv)} exited {done.returncode}: {tail}"
            )

    return run


def _service(index: int) -> str:
    from deploy.replicas import service_name  # the compose override's own naming

    return service_name(index)


def dev_restart(run_dir: Path) -> Restart:
    """The ``make dev`` stack's restart of one replica (its restart policy brings it back)."""

    def run(replica: Replica, index: int) -> None:
        from deploy.dev import DevError, restart_replica

        try:
            restart_replica(run_dir, index)
        except DevError as exc:
            raise RollingError(str(exc)) from None

    return run


# -- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deploy.rolling", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None, help="env/<name>.env, a name, or $PROFILE")
    p.add_argument("--gateway-url", default=None, help="default: the profile's gateway address")
    p.add_argument("--token-file", type=Path, default=None, help="GATEWAY_INTERNAL_TOKEN_FILE")
    p.add_argument("--drain-timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for in-flight requests (GATEWAY_DRAIN_TIMEOUT_S)")  # fmt: skip
    p.add_argument("--poll", type=float, default=POLL_S, metavar="S", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="action", required=True)
    for action in ("drain", "undrain"):
        sub.add_parser(action, help=f"{action} one replica").add_argument("name", help="host:port")
    r = sub.add_parser("restart", help="restart every replica, one at a time")
    how = r.add_mutually_exclusive_group(required=True)
    how.add_argument("--restart", choices=["dev"], help="the make dev stack's restart")
    how.add_argument("--restart-cmd", metavar="TEMPLATE",
                     help="e.g. 'docker compose -p gemma4 restart {service}'")  # fmt: skip
    r.add_argument("--run-dir", type=Path, default=None, help="make dev's run dir (--restart dev)")
    r.add_argument("--ready-timeout", type=float, default=None, metavar="S",
                   help="per replica: restart + warm-up (default: engine ready timeout + warm-up budget)")  # fmt: skip
    r.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="restart only this replica (repeatable)")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = str(profile_path(args.profile))
    gw_settings = GatewaySettings.load(profile)
    gw = Internal(
        args.gateway_url or gw_settings.url, args.token_file or gw_settings.internal_token_file
    )
    drain_timeout = args.drain_timeout or gw_settings.drain_timeout_s
    clock = Clock()
    try:
        if args.action == "drain":
            drain(gw, args.name, drain_timeout, clock, args.poll)
            clock.say(f"{args.name}: safe to stop (undrain: make undrain REPLICA={args.name})")
        elif args.action == "undrain":
            gw.snapshot().get(args.name)
            gw.undrain(args.name)
            clock.say(f"{args.name}: undrained")
        else:
            if args.restart == "dev":
                from deploy.dev import RUN_DIR

                restart = dev_restart(args.run_dir or RUN_DIR)
            else:
                restart = command_restart(args.restart_cmd)
            ready_timeout = args.ready_timeout or (
                EngineEnv.load(profile).vllm_engine_ready_timeout_s
                + WarmupSettings.load(profile).budget_s
            )
            rolling_restart(gw, restart, drain_timeout_s=drain_timeout,
                            ready_timeout_s=ready_timeout, clock=clock, poll_s=args.poll,
                            only=args.only)  # fmt: skip
    except RollingError as exc:
        clock.say(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
