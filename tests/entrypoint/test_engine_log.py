"""The launcher keeps the engine's output in a known file (``run_group(log_path=...)``): every
byte still reaches the console, the file starts with the launcher's header, stdout and stderr
are both kept, and each start truncates it. Driven in a child process because ``run_group``
installs signal handlers (as in test_process.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DRIVER = """
import os, sys
from pathlib import Path
from entrypoint.process import run_group
code = run_group(["sh", "-c", sys.argv[1]], os.environ, log_path=Path(sys.argv[2]), log_header="launcher header\\n")
print("returned", code, flush=True)
"""


def drive(script: str, log: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, script, str(log)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip


def test_output_goes_to_the_console_and_the_file(tmp_path: Path) -> None:
    log = tmp_path / "sub" / "engine.log"
    r = drive("echo 'KV cache size: 7 tokens'; echo oops >&2; exit 3", log)
    assert "returned 3" in r.stdout
    assert "KV cache size: 7 tokens" in r.stdout and "oops" in r.stdout  # the console keeps all
    assert log.read_text().splitlines() == ["launcher header", "KV cache size: 7 tokens", "oops"]


def test_each_start_truncates_the_file(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    drive("echo first", log)
    drive("echo second", log)
    assert log.read_text() == "launcher header\nsecond\n"


def test_the_file_stops_growing_past_its_cap(tmp_path: Path) -> None:
    """With the cap lowered to 100 bytes: the chunk that crosses it is still written, nothing
    after it; the console gets everything."""
    capped = DRIVER.replace(
        "from entrypoint.process import run_group",
        "import entrypoint.process as p\np.LOG_FILE_MAX_BYTES = 100\nfrom entrypoint.process import run_group",
    )
    log = tmp_path / "engine.log"
    r = subprocess.run(
        [sys.executable, "-c", capped, "yes a | head -c 300; sleep 0.5; echo TAIL", str(log)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert "TAIL" in r.stdout
    content = log.read_text()
    assert content.startswith("launcher header\na\na") and "TAIL" not in content
