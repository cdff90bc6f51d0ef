"""``make dev [REPLICAS=N]``: the roles as local processes, no Docker; Ctrl-C stops them all.

    python -m deploy.dev [--profile cpu] [--replicas N] [--engine-url http://127.0.0.1:8000]
    python -m deploy.dev --restart-replica I      # ask the running stack to restart replica I

The same wiring as the Compose stack, on loopback: ``N`` engines (``python -m entrypoint serve``,
with ``--replica I`` when there are several: replica ``I`` on ``ENGINE_PORT + I`` with its own
hot-cache subdir), the gateway (``python -m gateway``, 127.0.0.1:8080 by default) and the
warm-up in ``--watch`` mode, which warms every replica and re-warms one that restarted; the
gateway's /health turns 200 once enough replicas are warm. ``ENGINE_REPLICAS=N`` is put in every
role's environment, so the gateway and the warm-up see the same replica set as the engines.
``--engine-url`` reuses an engine that is already running (e.g. ``make engine`` in another
terminal) instead of starting any.

Restart policy, like compose's ``restart: unless-stopped``: an engine replica or the warm-up that
exits is started again after a backoff (1 s, doubling up to 30 s; back to 1 s once it had run
for a minute), logged, while the gateway and the other replicas keep serving. Two exceptions
fail fast instead, as before: the gateway dying stops everything (it is the door), and an engine
that exits before it ever answered /health (a preflight or configuration error) stops
everything with its exit status rather than looping. ``--restart-replica I`` (what
``make rolling-restart`` uses on a dev stack, through ``deploy.rolling``) sends SIGTERM to that
replica's process group: it drains and exits, and the policy starts it again at once.

An engine start that prints nothing for two minutes and does not serve yet is diagnosed once, while
it still runs (``entrypoint.procdiag``: its process tree sampled twice, CPU growth, kernel wait
channel, host pressure, Python stacks), its lines prefixed ``!``: slow and stuck look alike from
outside, not in that report.

Every role runs in its own session (process group). The supervisor remembers, while a role
lives, every process group its children made (the entrypoint runs vLLM as a group leader), so a
role killed with SIGKILL leaves nothing behind either: its remembered groups are killed before
it is started again. Ctrl-C or SIGTERM stops all roles in reverse order: SIGTERM to each group,
then SIGKILL to whatever is left. Nothing is orphaned and nothing is killed by name. The run
directory (``.cache/dev``) holds ``dev.pid`` and one ``engine-I.pid`` per replica for
``--restart-replica``; they are removed at exit.

``--workers N`` (``make dev WORKERS=2``) runs the gateway as N workers (``GATEWAY_WORKERS``), with
their shared state: the host's ``redis-server`` started first and stopped last, the way the
compose ``state`` service starts it (``deploy/state_server.py``: loopback, ``STATE_PORT``
default 6380, nothing persisted, a generated password in ``<run dir>/state-url``); without
``redis-server`` on PATH it says what to install and stops.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deploy.state_server import DEFAULT_PORT as STATE_PORT
from entrypoint.process import descendants, groups_of, signal_group, stop_grace_s
from env.settings import EngineSettings, GatewaySettings, profile_path

REPO = Path(__file__).resolve().parents[1]
RUN_DIR = REPO / ".cache" / "dev"
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 60.0  # a role that ran this long before dying starts the backoff over
TICK_S = 0.5
SILENT_S = 120.0  # an engine start that printed nothing this long is diagnosed (procdiag)


class DevError(Exception):
    """A request to the running dev stack that cannot be done; one line."""


class Stopped(Exception):
    """Ctrl-C / SIGTERM, or a role that must not die died."""


def say(message: str) -> None:
    print(f"{'dev':>8} | {message}", flush=True)


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Role:
    """One role's process: started as a session leader, output prefixed with its name."""

    name: str
    argv: list[str]
    env: dict[str, str]
    grace_s: float = 15.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    groups: set[int] = field(default_factory=set, init=False)  # every group its tree made
    lines: int = field(
        default=0, init=False
    )  # output lines so far (the supervisor's silence check)

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
        self.groups = {self.proc.pid}
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        say(f"started {self.name} (pid {self.proc.pid}): {' '.join(self.argv[1:])}")

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines += 1
            print(f"{self.name:>8} | {line}", flush=True)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def remember_groups(self) -> None:
        """Note the process groups of the role's live tree (they outlive a SIGKILLed leader)."""
        if self.proc is not None and self.proc.poll() is None:
            self.groups |= groups_of(descendants(self.proc.pid))
            self.groups.discard(os.getpgid(0))  # never our own group

    def kill_leftovers(self) -> None:
        """SIGKILL every group the role's tree made (after the leader exited)."""
        self.remember_groups()
        self.groups.discard(os.getpgid(0))
        for pgid in self.groups:
            signal_group(pgid, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the role's group, wait, then SIGKILL every group it and its children made."""
        if self.proc is None:
            return
        self.remember_groups()
        if self.proc.poll() is None:
            signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                say(f"{self.name} ignored SIGTERM for {self.grace_s:.0f} s; killing it")
        self.kill_leftovers()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            say(f"{self.name} (pid {self.proc.pid}) did not exit after SIGKILL")


@dataclass
class Restartable:
    """A role under the restart policy, and where it stands in its backoff."""

    role: Role
    health_url: str | None = None  # engines: exiting before it ever answered 200 is fatal
    was_healthy: bool = False
    backoff_s: float = BACKOFF_FIRST_S
    due: float | None = None  # when a pending restart happens
    restarts: int = 0
    marker: Path | None = None  # present: the exit was requested (--restart-replica)
    started_at: float | None = None  # on the supervisor's clock, set by ``Supervisor.start``
    serving: bool = False  # answered /health since its last start
    lines_seen: int = 0  # the role's output count when the supervisor last saw it grow
    quiet_since: float | None = None
    diagnosed: bool = False  # this start's silence was already diagnosed


@dataclass
class Supervisor:
    """The restart policy over some roles; ``tick`` is called every ``TICK_S`` by the stack.

    Every time the policy compares (a pending restart's due time, how long a role ran before it
    died) comes from ``now``, and only from it: a start stamped with another clock made the
    backoff reset whenever the machine had been up for less than the reset window (a fake clock
    at 1,000 s minus a real monotonic clock of a few minutes). So members are started through
    ``start``, which stamps them with ``now``.
    """

    members: list[Restartable]
    now: Callable[[], float] = time.monotonic
    on_start: Callable[[Restartable], None] = lambda member: None
    diagnose: Callable[[Restartable, float], None] = field(default=lambda m, quiet_s: None)

    def start(self, member: Restartable) -> None:
        """Start (or restart) ``member``'s role and stamp the start on the policy's clock."""
        member.role.start()
        member.started_at = member.quiet_since = self.now()
        member.serving, member.diagnosed = False, False
        member.lines_seen = member.role.lines
        self.on_start(member)

    def _watch_start(self, m: Restartable, now: float) -> None:
        """An engine not yet serving since its start: note it serving, or note its silence.

        A start that printed nothing for ``SILENT_S`` is diagnosed once (``diagnose``: what its
        tree is doing, slow or stuck), while it still runs: a hang then explains itself."""
        if m.health_url is None or m.serving:
            return
        if healthy(m.health_url):
            m.serving = m.was_healthy = True
        elif m.role.lines != m.lines_seen:
            m.lines_seen, m.quiet_since = m.role.lines, now
        elif not m.diagnosed and m.quiet_since is not None and now - m.quiet_since >= SILENT_S:
            m.diagnosed = True
            self.diagnose(m, now - m.quiet_since)

    def tick(self) -> None:
        now = self.now()
        for m in self.members:
            role = m.role
            code = role.exit_code
            if m.due is not None:
                if now >= m.due:
                    m.due = None
                    m.restarts += 1
                    self.start(m)
                continue
            if code is None:
                role.remember_groups()
                self._watch_start(m, now)
                continue
            if m.health_url and not m.was_healthy:
                raise Stopped(f"{role.name} exited with {code} before it ever served /health")
            role.kill_leftovers()
            requested = m.marker is not None and m.marker.exists()
            if requested:
                assert m.marker is not None
                m.marker.unlink(missing_ok=True)
                delay, why = 0.0, "restart requested"
            else:
                ran_s = None if m.started_at is None else now - m.started_at
                if ran_s is not None and ran_s >= BACKOFF_RESET_AFTER_S:
                    m.backoff_s = BACKOFF_FIRST_S
                delay, why = m.backoff_s, f"exited with {code}"
                m.backoff_s = min(m.backoff_s * 2, BACKOFF_MAX_S)
            say(f"{role.name} {why}; restarting in {delay:.0f} s (restart #{m.restarts + 1})")
            m.due = now + delay


@dataclass
class DevStack:
    profile: str
    engine_url: str | None = None
    replicas: int | None = None
    run_dir: Path = RUN_DIR
    workers: int = 1  # GATEWAY_WORKERS; > 1 also runs the shared state (redis-server)
    roles: list[Role] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def _python(self, *args: str, env: dict[str, str], name: str, grace_s: float = 15.0) -> Role:
        argv = [sys.executable, "-m", *args, "--profile", self.profile]
        return Role(name, argv, env, grace_s)

    def _pidfile(self, index: int) -> Path:
        return self.run_dir / f"engine-{index}.pid"

    def run(self) -> int:
        engine = EngineSettings.load(self.profile)
        gateway = GatewaySettings.load(self.profile)
        n = self.replicas or engine.replicas
        shared = {"ENGINE_REPLICAS": str(n)}
        if self.engine_url:
            shared["GATEWAY_UPSTREAM_URL"] = self.engine_url.rstrip("/")
        gateway_url = gateway.url
        # an engine drains for --shutdown-timeout before it exits: give it that, and the rest
        engine_grace = max(15.0, stop_grace_s(engine.shutdown_timeout_s) + 5.0)
        members: list[Restartable] = []
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "dev.pid").write_text(f"{os.getpid()}\n")
        try:
            if not self.engine_url:
                for i in range(n):
                    args = ["entrypoint", "serve"] + (["--replica", str(i)] if n > 1 else [])
                    name = "engine" if n == 1 else f"engine-{i}"
                    role = self._python(*args, env=shared, name=name, grace_s=engine_grace)
                    url = f"http://127.0.0.1:{engine.replica_port(i)}/health"
                    marker = self.run_dir / f"engine-{i}.restart"
                    marker.unlink(missing_ok=True)
                    members.append(Restartable(role, health_url=url, marker=marker))
            gw_env = dict(shared)
            if self.workers > 1:
                gw_env.update(self._shared_state())
            gw = self._python("gateway", env=gw_env, name="gateway")
            warm_env = dict(shared)
            if self.engine_url:
                warm_env["WARMUP_ENGINE_URL"] = self.engine_url.rstrip("/")
            warm = Restartable(
                self._python("warmup", "--plain", "--watch", env=warm_env, name="warmup")
            )
            engines = list(members)
            members.append(warm)
            supervisor = Supervisor(members, on_start=self._started, diagnose=diagnose_silence)
            self.roles += [m.role for m in engines] + [gw, warm.role]  # start order; stop reversed
            for m in engines:
                supervisor.start(m)
            gw.start()
            supervisor.start(warm)
            say(f"{n} engine replica(s); waiting for {gateway_url}/health (warm-up --watch)")
            status = None
            while True:
                if self.stopping.is_set():
                    raise Stopped("stop requested")
                if gw.exit_code is not None:
                    raise Stopped(f"gateway exited with {gw.exit_code}")
                supervisor.tick()
                now_status = gateway_status(f"{gateway_url}/health")
                if now_status != status:
                    if now_status == "ok":
                        say(f"ready: {gateway_url} (gateway /health 200). Ctrl-C stops all.")
                    elif now_status and now_status.startswith("warmup_failed"):
                        say(f"warm-up FAILED ({now_status}); the gateway stays 503")
                    elif status == "ok":
                        say(f"gateway /health now {now_status or 'unreachable'}")
                    status = now_status
                time.sleep(TICK_S)
        except Stopped as why:
            failed = not self.stopping.is_set()
            say(f"stopping ({why})")
            return 1 if failed else 0
        finally:
            for role in reversed(self.roles):
                role.stop()
            for m in members:
                m.role.kill_leftovers()
            for path in [self.run_dir / "dev.pid", *self.run_dir.glob("engine-*.pid")]:
                path.unlink(missing_ok=True)
            say("all roles stopped")

    def _shared_state(self) -> dict[str, str]:
        """``WORKERS`` > 1: the workers' shared state, started first and stopped last: the
        ``state`` service's own starter (deploy/state_server.py: loopback, nothing persisted, a
        generated password in a private URL file of the run dir) over the host's redis-server."""
        if shutil.which("redis-server") is None:
            raise Stopped(
                f"WORKERS={self.workers} needs redis-server on PATH for the workers' shared state "
                "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
            )
        url_file = self.run_dir / "state-url"
        url_file.unlink(missing_ok=True)
        port = os.environ.get("STATE_PORT", str(STATE_PORT))
        state = Role(
            "state", [sys.executable, str(REPO / "deploy" / "state_server.py"), str(url_file)],
            {"STATE_PORT": port, "STATE_DIR": str(self.run_dir)},
        )  # fmt: skip
        self.roles.append(state)
        state.start()
        deadline = time.monotonic() + 10
        while not url_file.is_file():
            if state.exit_code is not None or time.monotonic() > deadline:
                raise Stopped(f"the shared state did not start (redis-server, port {port})")
            time.sleep(0.05)
        say(f"shared state for {self.workers} gateway workers: redis-server on 127.0.0.1:{port}")
        return {"GATEWAY_WORKERS": str(self.workers), "GATEWAY_STATE_URL": str(url_file)}

    def _started(self, member: Restartable) -> None:
        """A (re)started engine: record its group for ``--restart-replica``."""
        name, pid = member.role.name, member.role.pid
        if member.health_url is None or pid is None:
            return
        index = 0 if name == "engine" else int(name.rsplit("-", 1)[1])
        self._pidfile(index).write_text(f"{pid}\n")


def diagnose_silence(member: Restartable, quiet_s: float) -> None:
    """Print what a silent engine start is doing (two samples 10 s apart), off the tick loop."""
    role = member.role
    pid = role.pid
    if pid is None:
        return

    def run() -> None:
        from entrypoint.procdiag import report

        say(f"{role.name} printed nothing for {quiet_s:.0f} s and does not serve yet: diagnosing")
        for line in report(pid).splitlines():
            print(f"{role.name:>8} ! {line}", flush=True)

    threading.Thread(target=run, daemon=True).start()


def gateway_status(url: str) -> str | None:
    """The gateway's /health ``status`` (ok, warming_up, ...), None when it does not answer."""
    try:
        resp = httpx.get(url, timeout=3.0)
        return str(resp.json().get("status") or resp.status_code)
    except (httpx.HTTPError, ValueError):
        return None


def _ppid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def restart_replica(run_dir: Path, index: int) -> int:
    """Ask the running dev stack to restart replica ``index``; returns the group signalled.

    SIGTERM to that replica's process group (the entrypoint drains vLLM and exits); the stack's
    restart policy starts it again at once. The pid files are checked against the live process
    tree (the replica must be a child of the running ``deploy.dev``), never trusted blindly.
    """
    try:
        dev_pid = int((run_dir / "dev.pid").read_text())
        pid = int((run_dir / f"engine-{index}.pid").read_text())
    except (OSError, ValueError):
        msg = f"no make dev stack with replica {index} is running (run dir {run_dir})"
        raise DevError(msg) from None
    if _ppid(dev_pid) is None:
        raise DevError(f"the make dev stack (pid {dev_pid}) is not running (run dir {run_dir})")
    if _ppid(pid) != dev_pid:
        raise DevError(f"replica {index} (pid {pid}) is not running under make dev (pid {dev_pid})")
    (run_dir / f"engine-{index}.restart").write_text("")
    signal_group(pid, signal.SIGTERM)
    return pid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.dev", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None, help="env/<name>.env, a name, or $PROFILE")
    p.add_argument("--engine-url", default=None, help="use this running engine; start none")
    p.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="engine replicas (default: ENGINE_REPLICAS)")  # fmt: skip
    p.add_argument("--run-dir", type=Path, default=RUN_DIR, help="pid files (default .cache/dev)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="gateway worker processes (> 1: with a local redis-server)")  # fmt: skip
    p.add_argument("--restart-replica", type=int, default=None, metavar="I",
                   help="restart replica I of the running stack, then exit")  # fmt: skip
    args = p.parse_args(argv)
    if args.replicas is not None and args.replicas < 1:
        p.error("--replicas must be at least 1")
    if args.restart_replica is not None:
        try:
            pid = restart_replica(args.run_dir, args.restart_replica)
        except DevError as exc:
            print(f"dev: {exc}", file=sys.stderr)
            return 1
        print(f"dev: replica {args.restart_replica} (group {pid}) asked to stop; it restarts")
        return 0
    profile = str(profile_path(args.profile))
    stack = DevStack(profile, args.engine_url, args.replicas, args.run_dir, max(1, args.workers))

    def request_stop(signum: int, _frame: object) -> None:
        stack.stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stack.run()


if __name__ == "__main__":
    sys.exit(main())
