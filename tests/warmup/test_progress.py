"""Progress output: a live bar for people, one plain line per event for logs."""

from __future__ import annotations

import io

from rich.console import Console

from warmup.progress import PlainReporter, RichReporter, make_reporter


def drive(reporter) -> None:
    reporter.waiting("http://e", 3.0, 600.0, "connection refused")
    reporter.waited(4.2)
    reporter.plan_started(2)
    reporter.step_started(0, "chat", "chat template end to end")
    reporter.step_done("chat", "first 0.1 s, second 0.1 s")
    reporter.step_started(1, "prompt_16", "token bucket 16")
    reporter.step_done("prompt_16", "first 9.0 s, second 0.1 s  STALL (x90.0)")
    reporter.plan_done()


def test_plain_lines_name_each_step_with_its_position() -> None:
    out = io.StringIO()
    drive(PlainReporter(out))
    text = out.getvalue()
    assert "waiting for engine http://e: 3/600 s (connection refused)" in text
    assert "engine ready after 4.2 s" in text
    assert "[1/2] chat: chat template end to end" in text
    assert "[2/2] prompt_16" in text and "STALL" in text
    assert "\r" not in text and "\x1b" not in text, "no terminal control codes in logs"


def test_rich_reporter_draws_on_a_terminal() -> None:
    console = Console(record=True, force_terminal=True, width=120)
    drive(RichReporter(console))
    text = console.export_text()
    assert "engine ready after 4.2 s" in text and "prompt_16" in text and "STALL" in text


def test_non_terminals_get_plain_lines() -> None:
    assert isinstance(make_reporter(), PlainReporter)  # pytest captures stderr: not a TTY
    assert isinstance(make_reporter(force_plain=True), PlainReporter)
