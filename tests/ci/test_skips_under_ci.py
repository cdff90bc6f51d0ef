"""tests/conftest.py's CI hooks: under any non-empty CI a skip not on .ci/allowed-skips.txt
fails the pytest run itself (not only .ci/run's verdict)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).resolve().parent / "skip_sample.py"


def run_sample(ci: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
         str(SAMPLE.relative_to(REPO))],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False, env={**env, "CI": ci},
    )  # fmt: skip


@pytest.mark.parametrize("ci", ["true", "1"])
def test_unlisted_skip_fails_the_run_under_ci(ci: str) -> None:
    r = run_sample(ci)
    assert r.returncode == 1, r.stdout
    assert "skips not allowed under CI" in r.stdout
    assert "SKIPPED tests/ci/skip_sample.py::test_skips: sample skip" in r.stdout


def test_skip_is_only_reported_off_ci() -> None:
    r = run_sample("")
    assert r.returncode == 0, r.stdout
    assert "1 passed, 1 skipped" in r.stdout
    assert "skips not allowed" not in r.stdout
