#!/usr/bin/env python3
"""CI's verdict on a pytest run, from its JUnit XML report. Standard library only.

    python3 .ci/verdict.py results/junit.xml [--allowed-skips .ci/allowed-skips.txt]
                           [--pytest-status FILE] [--make-status N] [--ci | --no-ci]
                           [--slowest N]

Prints the ``--slowest N`` tests by their JUnit ``time`` (where CI's minutes went), every skipped
test (allowed or not), one verdict line, and last, alone on its line,
``N passed, N failed, N skipped`` (failed counts failures and errors). Exit status:

  0  tests ran and none failed (and, under CI, every skip is on the allow-list)
  1  failures or errors; under CI also any skip (or xfail) not on the allow-list, or an
     allow-list entry without a reason
  3  pytest did not finish: no readable report, or pytest said it was interrupted, crashed or
     was misused (its status 2, 3 or 4) without any recorded failure
  5  nothing collected

CI is on when ``--ci`` is given, or the environment has a non-empty ``CI`` (``true``, ``1``, ...)
and ``--no-ci`` is not given.

Test ids are pytest node ids (``tests/x/test_y.py::TestC::test_z[param]``), rebuilt from the
report's ``file`` attribute (pytest's ``-o junit_family=xunit1``; ``.ci/run`` sets it). Without it
the id is ``classname::name``. The allow-list has one entry per line, ``PATTERN  REASON``:
an ``fnmatch`` pattern over node ids, whitespace, then why the skip is legitimate; ``#`` starts a
comment line.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

OK, FAILED, UNFINISHED, NO_TESTS = 0, 1, 3, 5
PYTEST_UNFINISHED = {2, 3, 4}  # interrupted, internal error, usage error


@dataclass(frozen=True)
class Case:
    node_id: str
    outcome: str  # passed | failed | error | skipped
    message: str = ""
    seconds: float = 0.0  # the report's ``time``: set-up, call and tear-down together


@dataclass(frozen=True)
class Allowed:
    pattern: str
    reason: str


@dataclass
class Verdict:
    code: int
    headline: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"

    def render(self) -> str:
        return "\n".join([*self.lines, self.headline, self.summary])


def node_id(case: ET.Element) -> str:
    classname, name, file = case.get("classname", ""), case.get("name", ""), case.get("file")
    if file:
        module = file[: -len(".py")].replace("/", ".") if file.endswith(".py") else file
        if not classname:  # a collection error names the module, not a test
            return file
        rest = classname[len(module) :].lstrip(".") if classname.startswith(module) else ""
        return "::".join([file, *rest.split("."), name] if rest else [file, name])
    return f"{classname}::{name}" if classname else name


def read_report(path: Path) -> list[Case]:
    """Every testcase in the report, with one outcome each (failure or error beats skip)."""
    root = ET.parse(path).getroot()
    cases = []
    for tc in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("skipped", "failure", "error"):  # later wins
            child = tc.find(tag)
            if child is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                kind = child.get("type", "")
                message = child.get("message", "") or (child.text or "").strip()
                if kind == "pytest.xfail":
                    message = f"xfail: {message}".rstrip(": ")
        try:
            seconds = float(tc.get("time") or 0.0)
        except ValueError:
            seconds = 0.0
        cases.append(
            Case(node_id(tc), outcome, message.splitlines()[0] if message else "", seconds)
        )
    return cases


def slowest(cases: list[Case], n: int) -> list[str]:
    """The ``n`` longest tests, longest first, one line each (``  123.4 s  node id``)."""
    if n <= 0 or not cases:
        return []
    top = sorted(cases, key=lambda c: c.seconds, reverse=True)[:n]
    total = sum(c.seconds for c in cases)
    head = f"slowest {len(top)} of {len(cases)} tests ({total:.0f} s in all tests):"
    return [head, *(f"  {c.seconds:7.1f} s  {c.node_id}" for c in top)]


def read_allowed(path: Path | None) -> tuple[list[Allowed], list[str]]:
    """The allow-list's entries, and a problem line for each entry without a reason."""
    if path is None or not path.exists():
        return [], []
    entries, problems = [], []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = line.partition(" ")
        if "\t" in pattern:
            pattern, _, reason = line.partition("\t")
        if not reason.strip():
            problems.append(f"{path}:{number}: allow-list entry {pattern!r} has no reason")
        entries.append(Allowed(pattern, reason.strip()))
    return entries, problems


def allowed_by(case: Case, allowed: list[Allowed]) -> Allowed | None:
    return next((a for a in allowed if fnmatch.fnmatchcase(case.node_id, a.pattern)), None)


def decide(
    report: Path,
    allowed: list[Allowed] | None = None,
    *,
    ci: bool,
    pytest_status: int | None = None,
    make_status: int | None = None,
    allow_problems: list[str] | None = None,
    show_slowest: int = 0,
) -> Verdict:
    try:
        cases = read_report(report)
    except (OSError, ET.ParseError) as exc:
        return Verdict(UNFINISHED, f"pytest did not finish: no readable JUnit report ({exc})")
    allowed = allowed or []
    failed = [c for c in cases if c.outcome in ("failed", "error")]
    skipped = [c for c in cases if c.outcome == "skipped"]
    v = Verdict(OK, "", len(cases) - len(failed) - len(skipped), len(failed), len(skipped))
    v.lines += slowest(cases, show_slowest)
    unexpected = []
    for c in skipped:
        entry = allowed_by(c, allowed)
        if entry is None:
            unexpected.append(c)
        tag = f"allowed: {entry.reason}" if entry else ("NOT ALLOWED" if ci else "skipped")
        v.lines.append(f"SKIPPED {c.node_id} ({c.message}) [{tag}]")
    for c in failed:
        v.lines.append(f"{c.outcome.upper()} {c.node_id} ({c.message})")
    if ci:
        v.lines += allow_problems or []
    how = f"pytest status {pytest_status}" if pytest_status is not None else "pytest status unknown"
    if make_status is not None:
        how += f", make status {make_status}"
    if failed:
        v.code, v.headline = FAILED, f"tests FAILED: {len(failed)} failed or errored ({how})"
    elif pytest_status in PYTEST_UNFINISHED:
        v.code, v.headline = UNFINISHED, f"pytest did not finish ({how})"
    elif not cases:
        v.code, v.headline = NO_TESTS, f"NO TESTS COLLECTED: a failure ({how})"
    elif ci and unexpected:
        v.code = FAILED
        v.headline = (
            f"tests FAILED: {len(unexpected)} skip(s) not on the allow-list under CI ({how})"
        )
    elif ci and allow_problems:
        v.code, v.headline = (
            FAILED,
            "tests FAILED: the skip allow-list has entries without a reason",
        )
    elif pytest_status not in (None, 0) or make_status not in (None, 0):
        v.code, v.headline = FAILED, f"tests FAILED: the report shows no failure, but ({how})"
    else:
        v.headline = f"tests passed: {len(cases)} run, {len(skipped)} skipped ({how})"
    return v


def _int_from_file(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path, help="JUnit XML written by pytest --junitxml")
    p.add_argument("--allowed-skips", type=Path, default=None)
    p.add_argument("--pytest-status", default=None, help="file holding pytest's exit status")
    p.add_argument("--make-status", type=int, default=None)
    ci = p.add_mutually_exclusive_group()
    ci.add_argument("--ci", dest="ci", action="store_true", default=None)
    ci.add_argument("--no-ci", dest="ci", action="store_false")
    p.add_argument("--slowest", type=int, default=0, metavar="N", help="list the N longest tests")
    args = p.parse_args(argv)
    on_ci = bool(os.environ.get("CI", "").strip()) if args.ci is None else args.ci
    allowed, problems = read_allowed(args.allowed_skips)
    verdict = decide(
        args.report,
        allowed,
        ci=on_ci,
        pytest_status=_int_from_file(args.pytest_status),
        make_status=args.make_status,
        allow_problems=problems,
        show_slowest=args.slowest,
    )
    print(verdict.render(), flush=True)
    return verdict.code


if __name__ == "__main__":
    sys.exit(main())
