"""Is a Docker engine usable here? The compose tests run under CI or skip visibly.

CI provisions Docker itself (.ci/run), so there a missing engine is a failure of the CI setup,
never a reason to skip; on a developer machine without Docker the tests skip and say why.
CI is any non-empty ``CI`` value (``true``, ``1``, ``yes``: CI systems differ).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.process import REPO

COMPOSE_FILES = ("docker-compose.yml",)


def _run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )


def cli_problem() -> str | None:
    """Why `docker compose` (CLI + Compose v2 plugin) cannot run, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH (.ci/install-docker.sh installs it)"
    version = _run("docker", "compose", "version", "--short")
    if version.returncode != 0:
        return f"no Compose v2 plugin: {version.stderr.strip()[:200]}"
    return None


def engine_problem() -> str | None:
    """Why no Docker engine answers, or None."""
    problem = cli_problem()
    if problem:
        return problem
    try:
        info = _run("docker", "info", "--format", "{{.ServerVersion}}", timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info timed out: no Docker engine reachable"
    if info.returncode != 0:
        return f"no Docker engine reachable: {info.stderr.strip()[:200]}"
    return None


def require(problem: str | None) -> None:
    """Skip with the reason, or fail under CI, where skipping would hide a broken setup."""
    if problem is None:
        return
    if os.environ.get("CI", "").strip():
        pytest.fail(f"CI={os.environ['CI']} requires Docker, but: {problem}", pytrace=False)
    pytest.skip(problem)
