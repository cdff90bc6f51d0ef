"""A synthetic SSE upstream (``bench.synthetic``) per module, for client fault injection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.process import REPO


@pytest.fixture(scope="module")
def synthetic() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "synthetic", "--port", "0", "--itl-ms", "2",
         "--model", "synthetic"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "http://" in line, line
        yield line.split()[3]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
