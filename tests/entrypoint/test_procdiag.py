"""entrypoint.procdiag: a silent start's evidence tells a stuck process from a busy one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from entrypoint.procdiag import cpu_ticks, report
from entrypoint.process import descendants

WAITS = "import time; time.sleep(60)"
SPINS = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"


def _tree(script: str) -> subprocess.Popen[bytes]:
    """A parent that waits on a child running ``script`` (an entrypoint over its vLLM)."""
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {script!r}])"
    proc = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    deadline = time.monotonic() + 30
    while not descendants(proc.pid):  # both samples must see the child
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    return proc


def _child_line(text: str, second_half: bool = True) -> str:
    part = text.split(" s later ===", 1)[1] if second_half else text
    blocks = part.split("\npid ")
    return next(b for b in blocks if b and " -c import time" in b.splitlines()[0])  # the child


def test_a_waiting_child_shows_no_cpu_growth_and_a_spinning_one_does() -> None:
    waiting, spinning = _tree(WAITS), _tree(SPINS)
    try:
        slept: list[float] = []
        text = report(waiting.pid, interval_s=1.0, sleep=lambda s: (slept.append(s), time.sleep(s)))
        assert slept == [1.0]
        assert f"=== process tree of {waiting.pid} (first sample) ===" in text
        block = _child_line(text)
        assert "no CPU: waiting" in block and "state=S" in block, block
        assert "pressure cpu:" in text and "MemAvailable" in text and "busiest processes" in text

        busy = _child_line(report(spinning.pid, interval_s=1.0))
        assert "(busy)" in busy, busy
    finally:
        for proc in (waiting, spinning):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert cpu_ticks(waiting.pid) is None  # reaped: gone, not raised
