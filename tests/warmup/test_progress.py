"""Progress output: a live bar for people, one plain line per event for logs."""

from __future__ import annotations

import io
import re

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


STAMP = r"\d\d:\d\d:\d\d"


def test_non_terminals_get_tagged_plain_lines_on_stderr(capsys, monkeypatch) -> None:
    for var in ("TTY_COMPATIBLE", "FORCE_COLOR"):  # pytest captures stderr: not a TTY
        monkeypatch.delenv(var, raising=False)
    drive(make_reporter(tag="127.0.0.1:8001"))
    out, err = capsys.readouterr()
    assert out == ""  # stdout stays free for the summary
    assert re.fullmatch(
        f"{STAMP} warmup\\[127\\.0\\.0\\.1:8001\\]: waiting for engine http://e: 3/600 s "
        f"\\(connection refused\\)\n"
        f"{STAMP} warmup\\[127\\.0\\.0\\.1:8001\\]: engine ready after 4\\.2 s\n"
        f"{STAMP} warmup\\[127\\.0\\.0\\.1:8001\\]: running 2 steps\n"
        f"{STAMP} warmup\\[127\\.0\\.0\\.1:8001\\]: \\[1/2\\] chat: chat template end to end\n"
        f"{STAMP} warmup\\[127\\.0\\.0\\.1:8001\\]:   chat: first 0\\.1 s, second 0\\.1 s\n"
        f"{STAMP} warmup\\[127\\.0\\.0\\.1:8001\\]: \\[2/2\\] prompt_16: token bucket 16\n"
        f"{STAMP} warmup\\[127\\.0\\.0\\.1:8001\\]:   prompt_16: first 9\\.0 s, second 0\\.1 s  "
        f"STALL \\(x90\\.0\\)\n",
        err,
    ), err
    drive(make_reporter())  # one engine: no tag
    assert re.match(f"{STAMP} warmup: waiting for engine http://e", capsys.readouterr().err)


def test_terminals_get_the_live_display_unless_plain_is_forced(capsys, monkeypatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat stderr as a terminal
    reporter = make_reporter(tag="r1")
    assert isinstance(reporter, RichReporter)
    assert reporter.console.is_terminal and reporter.console.stderr
    drive(reporter)
    out, err = capsys.readouterr()
    assert out == ""
    assert "\x1b[" in err  # drawn with terminal control codes
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err)
    assert "waiting for engine http://e: 3/600 s (connection refused)" in text  # the live status
    assert "[r1] engine ready after 4.2 s" in text
    assert "[r1] chat: first 0.1 s, second 0.1 s" in text
    assert "[r1] prompt_16: first 9.0 s, second 0.1 s  STALL (x90.0)" in text
    assert "warm-up r1" in text and "2/2" in text  # the bar, titled with the tag, completed
    plain = make_reporter(force_plain=True)
    assert isinstance(plain, PlainReporter)
    drive(plain)
    err = capsys.readouterr().err
    assert re.match(f"{STAMP} warmup: waiting for engine http://e", err)
    assert "\x1b" not in err and "\r" not in err
