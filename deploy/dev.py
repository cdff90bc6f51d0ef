"""``make dev``: the three roles as local processes, no Docker; Ctrl-C stops them all.

    python -m deploy.dev [--profile cpu] [--engine-url http://127.0.0.1:8000]

The same wiring as the Compose stack, on loopback: the engine through ``python -m entrypoint
serve``, the gateway (``python -m gateway``, 127.0.0.1:8080 by default), and once the engine
answers its /health, one warm-up run (``python -m warmup``) that flips the gateway's /health to
200. ``--engine-url`` reuses an engine that is already running (e.g. ``make engine`` in another
terminal) instead of starting one.

Every role runs in its own session (process group). Ctrl-C or SIGTERM stops them in reverse
order: SIGTERM to each group, then SIGKILL to whatever is left, including process groups the
roles made for their own children (the entrypoint runs vLLM as a group leader). Nothing is
orphaned and nothing is killed by name. If the engine or the gateway dies, the others are
stopped too and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from entrypoint.process import descendants, groups_of, signal_group
from env.settings import EngineEnv, EngineSettings, GatewaySettings, profile_path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Role:
    """One role's process: started as a session leader, output prefixed with its name."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        say(f"started {self.name} (pid {self.proc.pid}): {' '.join(self.argv[1:])}")

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            print(f"{self.name:>7} | {line}", flush=True)

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the role's group, wait, then SIGKILL every group it and its children made."""
        if self.proc is None:
            return
        groups = {self.proc.pid} | groups_of(descendants(self.proc.pid))
        groups.discard(os.getpgid(0))  # never our own group
        if self.proc.poll() is None:
            signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                say(f"{self.name} ignored SIGTERM for {grace_s:.0f} s; killing it")
        groups |= groups_of(descendants(self.proc.pid))
        for pgid in groups:
            signal_group(pgid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            say(f"{self.name} (pid {self.proc.pid}) did not exit after SIGKILL")


def say(message: str) -> None:
    print(f"{'dev':>7} | {message}", flush=True)


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


class Stopped(Exception):
    """Ctrl-C / SIGTERM, or a role that must not die died."""


@dataclass
class DevStack:
    profile: str
    engine_url: str | None = None
    roles: list[Role] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def _python(self, *args: str, env: dict[str, str] | None = None, name: str) -> Role:
        return Role(name, [sys.executable, "-m", *args, "--profile", self.profile], env or {})

    def _check(self, essential: list[Role]) -> None:
        if self.stopping.is_set():
            raise Stopped("stop requested")
        for role in essential:
            if role.exit_code is not None:
                raise Stopped(f"{role.name} exited with {role.exit_code}")

    def run(self) -> int:
        engine = EngineSettings.load(self.profile)
        gateway = GatewaySettings.load(self.profile)
        ready_timeout = EngineEnv.load(self.profile).vllm_engine_ready_timeout_s
        engine_url = (self.engine_url or engine.url).rstrip("/")
        gateway_url = gateway.url
        shared = {"GATEWAY_UPSTREAM_URL": engine_url} if self.engine_url else {}
        essential: list[Role] = []
        try:
            if not self.engine_url:
                essential.append(self._python("entrypoint", "serve", name="engine"))
            essential.append(self._python("gateway", env=shared, name="gateway"))
            for role in essential:
                self.roles.append(role)
                role.start()

            say(f"waiting up to {ready_timeout} s for the engine at {engine_url}/health")
            deadline = time.monotonic() + ready_timeout
            while not healthy(f"{engine_url}/health"):
                self._check(essential)
                if time.monotonic() > deadline:
                    raise Stopped(f"engine not healthy after {ready_timeout} s")
                time.sleep(1.0)

            warm_env = {"WARMUP_ENGINE_URL": engine_url} if self.engine_url else {}
            warmup = self._python("warmup", "--plain", env=warm_env, name="warmup")
            self.roles.append(warmup)
            warmup.start()
            announced = False
            while True:
                self._check(essential)
                if warmup.exit_code is not None and not announced:
                    if warmup.exit_code != 0:
                        say(f"warm-up FAILED (exit {warmup.exit_code}); the gateway stays 503")
                        announced = True
                    elif healthy(f"{gateway_url}/health"):
                        say(f"ready: {gateway_url} (gateway /health 200). Ctrl-C stops all.")
                        announced = True
                time.sleep(0.5)
        except Stopped as why:
            failed = not self.stopping.is_set()
            say(f"stopping ({why})")
            return 1 if failed else 0
        finally:
            for role in reversed(self.roles):
                role.stop()
            say("all roles stopped")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.dev", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None, help="env/<name>.env, a name, or $PROFILE")
    p.add_argument("--engine-url", default=None, help="use this running engine; start none")
    args = p.parse_args(argv)
    profile = str(profile_path(args.profile))
    stack = DevStack(profile=profile, engine_url=args.engine_url)

    def request_stop(signum: int, _frame: object) -> None:
        stack.stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stack.run()


if __name__ == "__main__":
    sys.exit(main())
