"""Session-wide fixtures: ONE real vLLM CPU engine shared by every test that needs it.

Starting the engine costs ~40 s and ~3 GB, so it is started lazily the first time a test asks
for it and stopped (by process group) when the session ends. Tests that need an engine of their
own (restarts, kills) use ``tests.support.engine.start_engine`` directly and stop it themselves.

Under CI (any non-empty ``CI``) a skipped or xfailed test fails the run unless it is on
``.ci/allowed-skips.txt`` (the hooks at the end; ``.ci/verdict.py`` applies the same list to the
JUnit report in ``.ci/run``). Test order is shuffled by pytest-randomly (the header prints
``Using --randomly-seed=N``; replay with ``-p randomly --randomly-seed=N``, debug in file order
with ``-p no:randomly``).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint import tinymodel
from env.settings import CacheSettings
from tests.support import engine as engine_support
from tests.support.engine import PROFILE, Engine, start_engine, start_engine2


@pytest.fixture(scope="session")
def tiny_model() -> None:
    """Build the tiny model once up front, so parallel engines never race to build it."""
    tinymodel.build(CacheSettings.load(PROFILE).tiny_model_dir)


@pytest.fixture(scope="session", autouse=True)
def compile_seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's merged compile cache, from which every later engine starts warm
    (``tests.support.engine.seed_compile_cache``)."""
    seed = tmp_path_factory.mktemp("compile-seed")
    engine_support.COMPILE_SEED = seed
    try:
        yield seed
    finally:
        engine_support.COMPILE_SEED = None


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model: None) -> Iterator[Engine]:
    eng = start_engine(tmp_path_factory.mktemp("engine"))
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="session")
def engine2(tmp_path_factory: pytest.TempPathFactory, tiny_model: None) -> Iterator[Engine]:
    """A second engine for the session, pinned to the last core (multi-replica tests share it;
    a test that kills or restarts it starts it again before it returns)."""
    eng = start_engine2(tmp_path_factory.mktemp("engine2"))
    try:
        yield eng
    finally:
        eng.stop()


# --- under CI, a skip is a failure unless allow-listed (.ci/allowed-skips.txt) ----------------

_CI_DIR = Path(__file__).resolve().parents[1] / ".ci"
_skipped: list[tuple[str, str]] = []  # (node id, reason)


def _on_ci() -> bool:
    return bool(os.environ.get("CI", "").strip())


def _allowed_patterns() -> list[str]:
    """The allow-list's patterns, parsed by .ci/verdict.py itself (one parser for both)."""
    verdict = sys.modules.get("ci_verdict")
    if verdict is None:
        spec = importlib.util.spec_from_file_location("ci_verdict", _CI_DIR / "verdict.py")
        assert spec is not None and spec.loader is not None
        verdict = importlib.util.module_from_spec(spec)
        sys.modules["ci_verdict"] = verdict  # its dataclasses resolve names through sys.modules
        spec.loader.exec_module(verdict)
    entries, _problems = verdict.read_allowed(_CI_DIR / "allowed-skips.txt")
    return [e.pattern for e in entries]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        if hasattr(report, "wasxfail"):
            reason = f"xfail {report.wasxfail}".strip()
        else:
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            reason = str(reason).removeprefix("Skipped: ")
        _skipped.append((report.nodeid, str(reason)))


def _unexpected_skips() -> list[tuple[str, str]]:
    if not _on_ci() or not _skipped:
        return []
    patterns = _allowed_patterns()
    return [(n, r) for n, r in _skipped if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == 0 and _unexpected_skips():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    unexpected = _unexpected_skips()
    if unexpected:
        terminalreporter.section("skips not allowed under CI (.ci/allowed-skips.txt)", red=True)
        for node_id, reason in unexpected:
            terminalreporter.line(f"SKIPPED {node_id}: {reason}")
