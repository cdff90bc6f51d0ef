"""Progress output: a rich progress bar on a terminal, plain log lines everywhere else.

Compose and CI capture stdout into logs, where a redrawn bar becomes thousands of garbage lines;
a person at a terminal wants one live line. Both get the same events.

With several replicas every line carries the replica's name (``warmup[127.0.0.1:8001]: ...``),
so interleaved warm-ups stay readable and greppable. Rich draws one live display at a time, so
it is used only when at most one replica can be waited for or warmed at once
(``warmup.fleet.use_rich``); otherwise each replica gets tagged plain lines.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LOG_EVERY_S = 15.0  # plain mode: one "still waiting" line per interval, not one per poll


class Reporter(Protocol):
    def log(self, message: str) -> None: ...
    def waiting(self, url: str, elapsed_s: float, timeout_s: float, reason: str) -> None: ...
    def waited(self, elapsed_s: float) -> None: ...
    def plan_started(self, total: int) -> None: ...
    def step_started(self, index: int, name: str, why: str) -> None: ...
    def step_done(self, name: str, line: str) -> None: ...
    def plan_done(self) -> None: ...


class PlainReporter:
    """One timestamped line per event, on stderr (stdout stays free for the summary)."""

    def __init__(self, stream: TextIO | None = None, tag: str = "") -> None:
        self._stream = stream or sys.stderr
        self._last_wait = -LOG_EVERY_S
        self._total = 0
        self._who = f"warmup[{tag}]" if tag else "warmup"

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} {self._who}: {message}", file=self._stream, flush=True)

    def waiting(self, url: str, elapsed_s: float, timeout_s: float, reason: str) -> None:
        if elapsed_s - self._last_wait >= LOG_EVERY_S:
            self._last_wait = elapsed_s
            self.log(f"waiting for engine {url}: {elapsed_s:.0f}/{timeout_s:.0f} s ({reason})")

    def waited(self, elapsed_s: float) -> None:
        self._last_wait = -LOG_EVERY_S
        self.log(f"engine ready after {elapsed_s:.1f} s")

    def plan_started(self, total: int) -> None:
        self._total = total
        self.log(f"running {total} steps")

    def step_started(self, index: int, name: str, why: str) -> None:
        self.log(f"[{index + 1}/{self._total}] {name}: {why}")

    def step_done(self, name: str, line: str) -> None:
        self.log(f"  {name}: {line}")

    def plan_done(self) -> None:
        pass


class RichReporter:
    """A live status line while waiting and a progress bar while the plan runs."""

    def __init__(self, console: Console | None = None, tag: str = "") -> None:
        self.console = console or Console(stderr=True, log_path=False)
        self._status = None
        self._progress: Progress | None = None
        self._task = None
        self._prefix = f"[{tag}] " if tag else ""
        self._title = f"warm-up {tag}" if tag else "warm-up"

    def log(self, message: str) -> None:
        self.console.log(self._prefix + message, markup=False)

    def waiting(self, url: str, elapsed_s: float, timeout_s: float, reason: str) -> None:
        text = f"waiting for engine {url}: {elapsed_s:.0f}/{timeout_s:.0f} s ({reason})"
        if self._status is None:
            self._status = self.console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def waited(self, elapsed_s: float) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        self.log(f"engine ready after {elapsed_s:.1f} s")

    def plan_started(self, total: int) -> None:
        self._progress = Progress(
            TextColumn(f"[bold]{self._title}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=total)

    def step_started(self, index: int, name: str, why: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=f"{name}: {why}")

    def step_done(self, name: str, line: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.console.log(f"{self._prefix}{name}: {line}", markup=False)
            self._progress.advance(self._task)

    def plan_done(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def make_reporter(force_plain: bool = False, tag: str = "") -> Reporter:
    """Rich on an interactive terminal, plain lines otherwise (compose logs, CI, pipes).

    ``tag`` (a replica's name) prefixes every line; empty for a single engine.
    """
    console = Console(stderr=True, log_path=False)
    if console.is_terminal and not force_plain:
        return RichReporter(console, tag)
    return PlainReporter(tag=tag)
