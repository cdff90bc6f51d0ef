""".ci/verdict.py (CI's exit code and summary) on recorded JUnit reports, and .ci/lib.sh's
test phase end to end with a stand-in test command."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CI_DIR = REPO / ".ci"
JUNIT = Path(__file__).resolve().parent / "junit"


def _load_verdict():  # type: ignore[no-untyped-def]
    if "ci_verdict" in sys.modules:  # tests/conftest.py loaded it already
        return sys.modules["ci_verdict"]
    spec = importlib.util.spec_from_file_location("ci_verdict", CI_DIR / "verdict.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ci_verdict"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


verdict = _load_verdict()


def run_cli(
    report: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["python3", str(CI_DIR / "verdict.py"), str(report), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "CI"}, **(env or {})},
        check=False,
    )


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


# (report, ci, code, counts): counts are the exact closing line CI's harness reads.
CASES = [
    ("pass.xml", True, 0, "3 passed, 0 failed, 0 skipped"),
    ("fail.xml", True, 1, "2 passed, 1 failed, 0 skipped"),
    ("error.xml", True, 1, "1 passed, 1 failed, 0 skipped"),
    ("collection-error.xml", True, 1, "0 passed, 1 failed, 0 skipped"),
    ("none.xml", True, 5, "0 passed, 0 failed, 0 skipped"),
    ("skip.xml", True, 1, "2 passed, 0 failed, 2 skipped"),
    ("skip.xml", False, 0, "2 passed, 0 failed, 2 skipped"),
    ("missing.xml", True, 3, "0 passed, 0 failed, 0 skipped"),
    ("truncated.xml", True, 3, "0 passed, 0 failed, 0 skipped"),
]


@pytest.mark.parametrize(("report", "ci", "code", "counts"), CASES)
def test_cli_exit_code_and_closing_line(report: str, ci: bool, code: int, counts: str) -> None:
    r = run_cli(JUNIT / report, "--ci" if ci else "--no-ci")
    assert r.returncode == code, r.stdout + r.stderr
    assert last_line(r.stdout) == counts


def test_skipped_tests_are_listed_with_their_ids_and_reasons() -> None:
    out = run_cli(JUNIT / "skip.xml", "--ci").stdout
    assert (
        "SKIPPED tests/compose/test_stack.py::test_up[cpu] (no docker CLI on PATH) [NOT ALLOWED]"
        in out
    )
    assert "SKIPPED tests/sub/test_a.py::test_xf (xfail) [NOT ALLOWED]" in out
    assert "2 skip(s) not on the allow-list under CI" in out


def test_failed_tests_are_listed() -> None:
    out = run_cli(JUNIT / "fail.xml", "--ci").stdout
    assert "FAILED tests/sub/test_a.py::test_fail (assert 0)" in out


def test_allowed_skips_pass_under_ci(tmp_path: Path) -> None:
    allow = tmp_path / "allowed.txt"
    allow.write_text(
        "# comment\n"
        "tests/compose/test_stack.py::test_up[[]*]  no Docker on this runner class\n"
        "tests/sub/test_a.py::test_xf\tknown upstream bug\n"
    )
    r = run_cli(JUNIT / "skip.xml", "--ci", "--allowed-skips", str(allow))
    assert r.returncode == 0, r.stdout
    assert "[allowed: no Docker on this runner class]" in r.stdout
    assert last_line(r.stdout) == "2 passed, 0 failed, 2 skipped"


def test_one_allowed_skip_does_not_cover_another(tmp_path: Path) -> None:
    allow = tmp_path / "allowed.txt"
    allow.write_text("tests/sub/test_a.py::test_xf  known upstream bug\n")
    r = run_cli(JUNIT / "skip.xml", "--ci", "--allowed-skips", str(allow))
    assert r.returncode == 1
    assert "1 skip(s) not on the allow-list" in r.stdout


def test_allow_list_entry_without_reason_fails(tmp_path: Path) -> None:
    allow = tmp_path / "allowed.txt"
    allow.write_text("tests/compose/test_stack.py::*\ntests/sub/test_a.py::test_xf  bug\n")
    r = run_cli(JUNIT / "skip.xml", "--ci", "--allowed-skips", str(allow))
    assert r.returncode == 1
    assert "has no reason" in r.stdout


@pytest.mark.parametrize("value", ["true", "1", "yes", "True"])
def test_any_non_empty_ci_value_means_ci(value: str) -> None:
    assert run_cli(JUNIT / "skip.xml", env={"CI": value}).returncode == 1


def test_empty_ci_value_is_not_ci() -> None:
    assert run_cli(JUNIT / "skip.xml", env={"CI": ""}).returncode == 0


def test_pytest_status_says_interrupted(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("2\n")
    r = run_cli(JUNIT / "pass.xml", "--ci", "--pytest-status", str(status))
    assert r.returncode == 3
    assert "did not finish" in r.stdout
    # a collection error also makes pytest exit 2: that is a failure, not an unfinished run
    assert run_cli(JUNIT / "collection-error.xml", "--pytest-status", str(status)).returncode == 1


def test_clean_report_but_failing_make_is_a_failure() -> None:
    assert run_cli(JUNIT / "pass.xml", "--ci", "--make-status", "2").returncode == 1
    assert run_cli(JUNIT / "pass.xml", "--ci", "--make-status", "0").returncode == 0


def test_node_ids_rebuilt_from_the_report() -> None:
    cases = verdict.read_report(JUNIT / "pass.xml")
    assert [c.node_id for c in cases] == [
        "tests/sub/test_a.py::test_ok",
        "tests/sub/test_a.py::test_param[a b]",
        "tests/sub/test_a.py::TestC::test_m",
    ]


def test_real_allow_list_parses_and_every_entry_has_a_reason() -> None:
    _entries, problems = verdict.read_allowed(CI_DIR / "allowed-skips.txt")
    assert problems == []


# --- .ci/lib.sh: the test phase and the closing line, with a stand-in for `make test` ---------

FAKE_TEST = """
set -euo pipefail
. "$CI_LIB"
started=$(date +%s)
trap 'ci_finish $? $started' EXIT
ci_phase setup true
rc=0
ci_tests "$RESULTS" bash -c "$FAKE" || rc=$?
exit "$rc"
"""


def run_phase(tmp_path: Path, fake: str) -> subprocess.CompletedProcess[str]:
    """Source .ci/lib.sh under `set -e` and run ci_tests with ``fake`` as the test command."""
    return subprocess.run(
        ["bash", "-c", FAKE_TEST],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")},
            "CI_LIB": str(CI_DIR / "lib.sh"),
            "RESULTS": str(tmp_path / "results"),
            "FAKE": fake,
            "CI_RANDOM_SEED": "1234",
        },
    )


def copy_report(name: str, status: int) -> str:
    """A stand-in test command: writes a recorded report where PYTEST_ADDOPTS says, then fails
    like `make test` does (status 2) when pytest's status is not 0."""
    return (
        'junit=$(printf "%s" "$PYTEST_ADDOPTS" | sed -n "s/.*--junitxml=\\([^ ]*\\).*/\\1/p"); '
        f'cp {JUNIT / name} "$junit"; echo {status} > "$PYTEST_STATUS_FILE"; '
        f"exit {2 if status else 0}"
    )


@pytest.mark.parametrize(
    ("report", "status", "code", "counts"),
    [
        ("pass.xml", 0, 0, "3 passed, 0 failed, 0 skipped"),
        ("fail.xml", 1, 1, "2 passed, 1 failed, 0 skipped"),
        ("none.xml", 5, 5, "0 passed, 0 failed, 0 skipped"),
        ("skip.xml", 0, 1, "2 passed, 0 failed, 2 skipped"),
    ],
)
def test_lib_test_phase_exit_code_and_closing_line(
    tmp_path: Path, report: str, status: int, code: int, counts: str
) -> None:
    r = run_phase(tmp_path, copy_report(report, status))
    assert r.returncode == code, r.stderr
    assert r.stdout.splitlines()[-1] == counts, r.stdout
    assert "phase summary:" in r.stderr
    assert "random test order seed: 1234" in r.stderr
    assert "--randomly-seed=1234" in r.stderr


def test_lib_test_phase_without_report_is_unfinished(tmp_path: Path) -> None:
    r = run_phase(tmp_path, "exit 2")
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines()[-1] == "0 passed, 0 failed, 0 skipped"
    assert "did not finish" in r.stderr


def test_lib_failing_provisioning_phase_still_prints_the_closing_line(tmp_path: Path) -> None:
    script = FAKE_TEST.replace("ci_phase setup true", "ci_phase setup bash -c 'exit 7'")
    r = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "CI_LIB": str(CI_DIR / "lib.sh"),
            "RESULTS": str(tmp_path),
            "FAKE": "true",
        },
    )
    assert r.returncode == 7
    assert r.stdout.splitlines()[-1] == "0 passed, 0 failed, 0 skipped"
    assert "phase test" not in r.stderr


def test_ci_phase_keeps_the_callers_errexit_setting() -> None:
    """The original bug: ci_phase forced `set -e` back on, so `set +e; ci_phase test make test`
    died at the failing test phase with make's 2 and never printed the summary."""
    script = (
        f'. "{CI_DIR / "lib.sh"}"; set +e; ci_phase one bash -c "exit 4"; echo "rc=$?"; '
        "case $- in *e*) echo errexit-on ;; *) echo errexit-off ;; esac; "
        "set -e; ci_phase two true; case $- in *e*) echo errexit-on ;; esac"
    )
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["rc=4", "errexit-off", "errexit-on"], r.stdout + r.stderr


def test_slowest_tests_are_listed_longest_first(tmp_path: Path) -> None:
    report = tmp_path / "timed.xml"
    cases = [("fast", "0.250"), ("slowest", "93.500"), ("middle", "12.000"), ("broken", "x")]
    report.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        + "".join(
            f'<testcase classname="tests.test_t" name="test_{n}" file="tests/test_t.py" time="{t}"/>'
            for n, t in cases
        )
        + "</testsuite></testsuites>"
    )
    out = run_cli(report, "--slowest", "2", "--no-ci").stdout.splitlines()
    assert out[:3] == [
        "slowest 2 of 4 tests (106 s in all tests):",
        "     93.5 s  tests/test_t.py::test_slowest",
        "     12.0 s  tests/test_t.py::test_middle",
    ]
    assert out[-1] == "4 passed, 0 failed, 0 skipped"
    assert not any("slowest" in line for line in run_cli(report, "--no-ci").stdout.splitlines())
