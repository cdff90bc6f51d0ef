"""The real vLLM CPU engine, started through the production entrypoint for a test session."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from entrypoint.process import descendants
from env.settings import EngineSettings
from tests.support.process import REPO, RunningServer, ServerProcess, free_port

PROFILE = REPO / "env" / "cpu.env"


@dataclass
class Engine(RunningServer):
    """A running engine: the entrypoint's process group (vLLM under it) and its settings."""

    @property
    def settings(self) -> EngineSettings:
        return EngineSettings.load(PROFILE)

    def restart(self) -> None:
        """Stop and start again on the same port: a new engine instance (new process start time)."""
        self.server.stop()
        self.server.start()

    def stop(self) -> int | None:
        return self.server.stop()


def start_engine(
    workdir: Path, port: int | None = None, extra_env: dict[str, str] | None = None
) -> Engine:
    """``python -m entrypoint serve --profile env/cpu.env`` on a free port, with private caches."""
    port = port or engine_port()
    env = {
        "ENGINE_PORT": str(port),
        "CACHE_HOT_DIR": str(workdir / "compile-hot"),
        "CACHE_PERSIST_DIR": str(workdir / "compile-persist"),
        "PYTHONUNBUFFERED": "1",
        # KV-cache events on (GATEWAY_ROUTING=kv's tests): a publisher thread in the engine
        # core, on ENGINE_PORT + 1000 and + 2000 (env/kvevents.py); nothing else changes.
        "ENGINE_KV_EVENTS": "on",
        **(extra_env or {}),
    }
    server = ServerProcess(
        argv=[sys.executable, "-m", "entrypoint", "serve", "--profile", str(PROFILE)],
        env=env,
        ready_url=f"http://127.0.0.1:{port}/health",
        log_path=workdir / "engine.log",
    )
    server.start()
    return Engine(server=server, port=port, env=env)


def engine_port(offset: int = 1000) -> int:
    """A free port whose KV-event companions (``port + offset``, ``port + 2 x offset``:
    env/kvevents.py) are free too: the engine binds all three, and a port another server holds
    would fail its start."""
    for _ in range(100):
        port = free_port()
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port + offset))
                b.bind(("127.0.0.1", port + 2 * offset))
        except OSError:  # taken (or past 65535): another
            continue
        return port
    raise RuntimeError("no free port with free KV-event companions")


def last_core() -> int:
    """The host's last allowed core: where a second engine is pinned, as ``serve --replica 1``
    would pin it (entrypoint/replica.py, cpu_environ); the session engine's OpenMP threads spin
    on the host's first cores (vLLM's auto binding)."""
    return max(os.sched_getaffinity(0))


def start_engine2(workdir: Path) -> Engine:
    """A second engine on its own core (``last_core``), confined there as the launcher must."""
    core = last_core()
    eng = start_engine(workdir, extra_env={"VLLM_CPU_OMP_THREADS_BIND": str(core)})
    try:
        assert_confined(eng, {core})
    except BaseException:
        eng.stop()
        raise
    return eng


def assert_confined(eng: Engine, cores: set[int]) -> None:
    """The launcher confined the whole engine to its bound cores (entrypoint.replica.
    bound_cores): a fresh engine's ``import torch`` must not move onto the session engine's
    busy core (the restart that stalled in the kernel for 10 minutes)."""
    masks = {}
    for pid in [eng.server.pid, *descendants(eng.server.pid)]:
        with contextlib.suppress(ProcessLookupError):  # a helper process that just exited
            masks[pid] = os.sched_getaffinity(pid)
    assert masks and all(m <= cores for m in masks.values()), masks


def engine_core_pid(eng: Engine) -> int:
    """The pid of the engine's core process (vLLM's ``EngineCore``, titled ``VLLM::EngineCore``:
    it schedules and generates; the API server beside it takes HTTP and aborts requests)."""
    found = []
    for pid in descendants(eng.server.pid):
        with contextlib.suppress(OSError):  # a helper process that just exited
            if b"EngineCore" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    assert len(found) == 1, f"one EngineCore process expected under {eng.server.pid}: {found}"
    return found[0]


@contextlib.contextmanager
def core_frozen(eng: Engine) -> Iterator[None]:
    """The engine's core stopped (SIGSTOP) for the block, resumed (SIGCONT) however it ends:
    nothing is generated meanwhile, while the API server keeps answering, taking disconnects and
    queueing aborts for the core."""
    pid = engine_core_pid(eng)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def serving(eng: Engine) -> bool:
    """The engine answers ``/health`` with 200 now."""
    try:
        return httpx.get(f"{eng.url}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running_after(eng: Engine) -> Iterator[Engine]:
    """For a test that kills or restarts a session engine (``engine2``): afterwards it serves
    again, whatever the test did or where it failed, so the tests after it find it started (a
    new instance: a gateway of theirs warms it as it would any engine)."""
    try:
        yield eng
    finally:
        if not serving(eng):
            eng.server.stop()  # whatever is left of the group (a killed vLLM's launcher)
            eng.server.start()
