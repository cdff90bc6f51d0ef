"""Run the real gateway (``python -m gateway``) as a process in front of an upstream.

``python -m bench gateway`` measures the production gateway, so it starts the same process an
operator runs: ``run_gateway`` starts it in its own process group on a free loopback port with a
private internal-token file, waits for ``/livez`` and stops the group on exit; ``mark_warm``
performs the real warm-up handshake (GET the engine instance the gateway sees, POST "passed"
for it), so the gateway serves without a warm-up run. The tests start servers the same way
(``tests.support`` builds on this module; product code never imports ``tests``).

``ServerProcess`` is the generic part: a server started as a session leader with its log on
disk, waited for with a deadline, and stopped with SIGTERM then SIGKILL to its whole group and
to every group its children made. Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from entrypoint.process import descendants, describe, dying, group_members, groups_of
from env.settings import DEFAULT_PROFILE

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# An httpx timeout or network error while waiting for a server: "not yet", not a failure.
NOT_YET = (httpx.TimeoutException, httpx.NetworkError)


def port_listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class ServerProcess:
    """A server started in its own process group, with its log on disk."""

    argv: Sequence[str]
    env: Mapping[str, str]
    ready_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.pid

    def start(
        self, timeout_s: float = 600.0, silent_s: float = 120.0, sample_s: float = 10.0
    ) -> ServerProcess:
        """Start and wait until ``ready_url`` answers 200; an outer bound, generous because a
        vLLM CPU engine compiles for minutes on a loaded 2-core machine.

        A start whose log has not grown for ``silent_s`` is diagnosed while it still runs
        (``entrypoint.procdiag``: two samples of its tree ``sample_s`` apart, the host's
        pressure, the Python stacks, and the log's last lines: whether the launcher's own lines
        were printed), into ``<log>.silent.txt`` and stderr; a start that times out is diagnosed
        before it is stopped. Slow or stuck then shows in the evidence."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(self.argv), env={**os.environ, **self.env}, cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        size, grew_at, diagnosed = self._log_size(), time.monotonic(), False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[:4]} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.ready_url, timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if (now_size := self._log_size()) != size:
                size, grew_at = now_size, time.monotonic()
            elif not diagnosed and time.monotonic() - grew_at >= silent_s:
                diagnosed = True
                self.diagnose(f"no output for {silent_s:g} s", sample_s)
            time.sleep(0.5)
        report = self.diagnose(f"not ready after {timeout_s:g} s", sample_s)
        self.stop()
        raise TimeoutError(f"{self.ready_url} not ready after {timeout_s:g} s:\n{report}")

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return -1

    def diagnose(self, why: str, sample_s: float = 10.0) -> str:
        """Write and print what the running tree is doing (see ``start``); returns the text."""
        from entrypoint.procdiag import report

        tail = self.log_tail(20) or "(nothing: the log is empty)"
        text = (
            f"{' '.join(self.argv[:5])}: {why}\n"
            f"--- last lines of {self.log_path} ---\n{tail}\n--- end of log ---\n"
            f"{report(self.pid, interval_s=sample_s)}\n"
        )
        out = self.log_path.with_name(self.log_path.name + ".silent.txt")
        with contextlib.suppress(OSError), out.open("a") as fh:
            fh.write(text)
        print(text, file=sys.stderr, flush=True)
        return text

    def stop(self, grace_s: float = 15.0, settle_s: float = 10.0) -> int | None:
        """SIGTERM the group, then SIGKILL after ``grace_s``. Returns the exit code.

        Groups the server made for its own children (the entrypoint runs vLLM as a session
        leader) are SIGKILLed at the end too, so even a failed graceful stop orphans nothing.
        A member of those groups or a listener on the port still there ``settle_s`` later fails
        the stop (``AssertionError`` naming what is left).
        """
        if self.proc is None:
            return None
        groups = groups_of(descendants(self.proc.pid))
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        for pgid in {self.proc.pid, *groups}:  # children that outlived the leader
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self._assert_gone({self.proc.pid, *groups}, settle_s)
        return self.proc.returncode

    def _assert_gone(
        self, groups: set[int], timeout_s: float = 10.0, dying_s: float = 120.0
    ) -> None:
        """After a stop: no live member in any of the server's groups, no listener on its port.

        SIGKILLed members are gone once the kernel has torn them down: a few ms, but a CI run
        saw a vLLM EngineCore still in /proc 10 s after its SIGKILL on a loaded machine. So a
        member that is provably on its way out (``entrypoint.process.dying``: in the kernel's
        exit path, or a SIGKILL pending) gets up to ``dying_s`` more, a bound against a hang;
        one that is not, after ``timeout_s``, is a survivor: a loud failure naming each
        member's state and where it sleeps. A later start on the same port must never meet the
        previous instance."""
        port = urlsplit(self.ready_url).port
        start = time.monotonic()
        while True:
            members = {g: left for g in groups if (left := group_members(g))}
            listening = port is not None and port_listening(port)
            if not members and not listening:
                return
            waited = time.monotonic() - start
            left = [pid for pids in members.values() for pid in pids]
            exiting = not listening and all(dying(pid) for pid in left)
            if waited >= timeout_s + (dying_s if exiting else 0.0):
                raise AssertionError(
                    f"{self.argv[:4]} stopped, but after {waited:.0f} s its groups still have "
                    f"members {members} and port {port} listening={listening}: "
                    + "; ".join(map(describe, left))
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class RunningServer:
    """A started loopback server: its process, port, URL and environment."""

    server: ServerProcess
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.server.pid


@dataclass
class GatewayProcess(RunningServer):
    """A gateway process plus the private dir holding its internal-token file."""

    workdir: Path

    @property
    def token_file(self) -> Path:
        return Path(self.env["GATEWAY_INTERNAL_TOKEN_FILE"])

    @property
    def internal_token(self) -> str:
        return self.token_file.read_text().strip()

    @property
    def internal_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.internal_token}"}

    def state(self) -> dict[str, object]:
        """The gateway's warm-up state (``GET /internal/warmup``)."""
        r = httpx.get(f"{self.url}/internal/warmup", headers=self.internal_headers, timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def log_tail(self, lines: int = 40) -> str:
        return self.server.log_tail(lines)


def wait_for_instance(gw: GatewayProcess, timeout_s: float = 30.0) -> str:
    """The engine instance the gateway currently sees (waits until it sees one)."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, object] | str = "no answer"
    while time.monotonic() < deadline:
        try:
            state = gw.state()
        except NOT_YET as exc:  # a busy gateway's slow answer is "not yet"
            state = repr(exc)
        else:
            if state["engine_instance"] and state["state"] != "engine_down":
                return str(state["engine_instance"])
        time.sleep(0.1)
    raise TimeoutError(f"gateway never saw the engine: {state}\n{gw.log_tail()}")


def mark_warm(gw: GatewayProcess, timeout_s: float = 30.0) -> str:
    """Report "passed" for the current engine instance; returns that instance."""
    instance = wait_for_instance(gw, timeout_s)
    r = httpx.post(
        f"{gw.url}/internal/warmup",
        headers=gw.internal_headers,
        json={"engine_instance": instance, "status": "passed", "step": None, "detail": None},
        timeout=5,
    )
    r.raise_for_status()
    if r.json().get("state") != "ready":
        raise RuntimeError(f"gateway did not turn ready after 'passed': {r.text}")
    return instance


def replicas(gw: GatewayProcess) -> list[dict[str, object]]:
    """``GET /internal/replicas``: every replica the gateway knows, with its state."""
    r = httpx.get(f"{gw.url}/internal/replicas", headers=gw.internal_headers, timeout=5)
    r.raise_for_status()
    return list(r.json()["replicas"])


def mark_all_warm(
    gw: GatewayProcess, timeout_s: float = 60.0, only: set[str] | None = None
) -> dict[str, str]:
    """Report "passed" for every replica's current engine instance (or those named in
    ``only``), once the gateway sees each; returns {replica name: instance}."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, str] = {}
    pending: list[dict[str, object]] = []
    while True:
        try:
            pending = [r for r in replicas(gw) if only is None or r["name"] in only]
        except NOT_YET:  # a busy gateway's slow answer is "not yet"
            pending = []
        for rep in pending:
            name, instance = str(rep["name"]), rep["engine_instance"]
            if rep["state"] == "ready":
                done[name] = str(instance)
            elif instance and rep["state"] != "engine_down":
                try:
                    r = httpx.post(
                        f"{gw.url}/internal/warmup", headers=gw.internal_headers, timeout=5,
                        json={"engine_instance": instance, "status": "passed", "step": None,
                              "detail": None},
                    )  # fmt: skip
                except NOT_YET:
                    continue
                if r.status_code == 200:
                    done[name] = str(instance)
        if pending and all(str(r["name"]) in done for r in pending):
            return done
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas never all seen: {pending}\n{gw.log_tail()}")
        time.sleep(0.1)


@contextlib.contextmanager
def run_gateway(
    upstream_url: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    profile: Path | str = DEFAULT_PROFILE,
) -> Iterator[GatewayProcess]:
    """``python -m gateway --profile P`` against ``upstream_url``; stopped by process group."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="gateway-") as tmp:
        workdir = Path(tmp)
        full_env = {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_UPSTREAM_URL": upstream_url,
            "GATEWAY_INTERNAL_TOKEN_FILE": str(workdir / "internal-token"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        server = ServerProcess(
            argv=[sys.executable, "-m", "gateway", "--profile", str(profile)],
            env=full_env,
            ready_url=f"http://127.0.0.1:{port}/livez",
            log_path=workdir / "gateway.log",
        )
        server.start(timeout_s=30.0)
        try:
            yield GatewayProcess(server=server, port=port, env=full_env, workdir=workdir)
        finally:
            server.stop(grace_s=5.0)
