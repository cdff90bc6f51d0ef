"""The real vLLM CPU engine, started through the production entrypoint for a test session."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

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
    port = port or free_port()
    env = {
        "ENGINE_PORT": str(port),
        "CACHE_HOT_DIR": str(workdir / "compile-hot"),
        "CACHE_PERSIST_DIR": str(workdir / "compile-persist"),
        "PYTHONUNBUFFERED": "1",
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
