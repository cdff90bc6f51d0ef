"""The real vLLM CPU engine, started through the production entrypoint for a test session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from entrypoint.process import descendants
from env.settings import EngineSettings
from tests.support.process import REPO, RunningServer, ServerProcess, free_port

PROFILE = REPO / "env" / "cpu.env"


# The compile caches the session's engines have built, merged (key dir -> its files): each
# engine started later gets a copy as its persistent dir (``seed_compile_cache``). Set by
# tests/conftest.py for the session; None: every engine starts cold.
COMPILE_SEED: Path | None = None


def seed_compile_cache(persist: Path) -> bool:
    """Fill a new engine's persistent compile-cache dir from the session's seed; whether any.

    Why: every engine a test starts in a fresh dir compiled from scratch (~25 s of a ~65 s
    start on a loaded 2-core box, measured), a dozen times a session. A seeded persistent dir
    is the product's own warm start (``entrypoint.cache.seed`` copies it into the hot dir, and
    vLLM loads its AOT-compiled graph instead of compiling); an engine whose settings differ
    finds no entry of its own there (vLLM hashes its config inside the key dir) and compiles,
    as it would have."""
    if COMPILE_SEED is None or persist.exists() or not any(COMPILE_SEED.iterdir()):
        return False
    shutil.copytree(COMPILE_SEED, persist, symlinks=True)
    return True


def collect_compile_cache(hot: Path) -> None:
    """Merge what a ready engine compiled (its hot dir's key dirs) into the session's seed."""
    if COMPILE_SEED is None or not hot.is_dir():
        return
    for key in (d for d in hot.iterdir() if d.is_dir() and not d.name.startswith(".")):
        shutil.copytree(key, COMPILE_SEED / key.name, symlinks=True, dirs_exist_ok=True)


@dataclass
class Engine(RunningServer):
    """A running engine: the entrypoint's process group (vLLM under it) and its settings;
    ``seeded``: whether its persistent compile-cache dir was seeded when it started."""

    seeded: bool = False

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
    seeded = seed_compile_cache(workdir / "compile-persist")
    server.start()
    collect_compile_cache(workdir / "compile-hot")
    return Engine(server=server, port=port, env=env, seeded=seeded)


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


class CoreSteps:
    """The engine's core run in short steps, the API server left to catch up between them.

    Why: on 2 busy cores vLLM's API server can lag its own core by a whole generation (the core
    generates thousands of tokens before the first one reaches a client), so a test that must act
    *during* a generation (a disconnect, a replica kill) cannot wait for "a few chunks" and hope
    the core is not done. Stepped, the core generates only in ``run_s`` bursts, and the next one
    starts only once the clients' progress has stopped moving for ``settle_s`` (the API server has
    delivered what was generated): whatever the box's speed, the clients are never far behind.
    A stopped core still takes requests and aborts: they wait in its socket."""

    def __init__(self, eng: Engine, run_s: float = 0.02, settle_s: float = 0.3) -> None:
        self.pid = engine_core_pid(eng)
        self.run_s, self.settle_s = run_s, settle_s
        self.steps = 0

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # killed by the test: nothing to stop
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)

    async def until(
        self, done: Callable[[], bool], progress: Callable[[], object], limit_s: float = 600
    ) -> None:
        """Step the core until ``done()``; the next step only once ``progress()`` (what the
        clients have received) has not changed for ``settle_s``. Returns with the core stopped."""
        deadline = time.monotonic() + limit_s  # a bound against a hang, not a timing claim
        self.stop()
        while not done():
            seen, still_since = progress(), time.monotonic()
            while time.monotonic() - still_since < self.settle_s and not done():
                await asyncio.sleep(0.02)
                if (now := progress()) != seen:
                    seen, still_since = now, time.monotonic()
            if done():
                break
            assert time.monotonic() < deadline, f"not done after {self.steps} steps: {seen}"
            self.resume()
            await asyncio.sleep(self.run_s)
            self.stop()
            self.steps += 1


@contextlib.asynccontextmanager
async def core_stepped(eng: Engine, **kwargs: float) -> AsyncIterator[CoreSteps]:
    """``CoreSteps`` for the block (the core stopped from the start); resumed however it ends."""
    steps = CoreSteps(eng, **kwargs)
    steps.stop()
    try:
        yield steps
    finally:
        steps.resume()


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
