"""The compile-cache save after a passed warm-up is reported loudly (issue 26, defect 2).

A failed save costs every later cold start a full compile (10-30+ min on TPU) while the warm-up
itself still passes, so a log line is not enough: the report carries ``cache_save`` and the
status server's ``/metrics`` carries ``warmup_compile_cache_saved`` (ops/prometheus/rules.yml
alerts on it). The sidecar runs in-process against the synthetic engine (``python -m bench
synthetic``) with the real plan; only the save is handed in (``Sidecar.save_cache``), so a test
decides whether it succeeds without a real compile cache.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from bench.overhead import synthetic_upstream
from protocol.prometheus import Scrape
from tests.warmup.test_handshake import SYNTHETIC_PROFILE
from warmup.progress import PlainReporter
from warmup.sidecar import Outcome, Sidecar
from warmup.status import CACHE_SAVE_FAILURES, CACHE_SAVED, StatusServer, Tracked


@pytest.fixture(scope="module")
def synthetic_engine() -> Iterator[str]:
    with synthetic_upstream("synthetic", itl_ms=1.0, ttft_ms=0.0) as (url, _pid):
        yield url


class Save:
    """A stand-in for ``warmup.notify.cache_save`` that records its calls."""

    def __init__(self, ok: bool, message: str) -> None:
        self.ok, self.message = ok, message
        self.calls: list[tuple[str, int | None]] = []

    def __call__(self, profile: str, replica: int | None) -> tuple[bool, str]:
        self.calls.append((profile, replica))
        return self.ok, self.message


def warm_with(tmp_path: Path, engine_url: str, save: Save) -> tuple[Sidecar, Outcome, str]:
    """One in-process warm-up of the synthetic engine with ``save`` as the cache write-back,
    then one scrape of the status server over it. Returns (sidecar, outcome, /metrics text)."""
    profile = tmp_path / "synthetic.env"
    profile.write_text(SYNTHETIC_PROFILE)
    base = Sidecar.load(str(profile), PlainReporter(io.StringIO()), tmp_path / "report.json",
                        notify=False)  # fmt: skip
    sidecar = replace(
        base,
        url=engine_url,
        warmup=base.warmup.model_copy(update={"cache_save": True}),
        console=Console(file=io.StringIO()),
        save_cache=save,
    )

    async def go() -> tuple[Outcome, str]:
        server = StatusServer([Tracked("synthetic", engine_url, sidecar.warm)])
        port = await server.start("127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                before = (await client.get("/metrics")).text
                assert f"{CACHE_SAVED}{{" not in before, "no gauge before any save"
                outcome = await sidecar.run_once()
                resp = await client.get("/metrics")
                assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
                return outcome, resp.text
        finally:
            await server.close()

    outcome, metrics = asyncio.run(go())
    return sidecar, outcome, metrics


def log_of(sidecar: Sidecar) -> str:
    return str(sidecar.reporter._stream.getvalue())  # type: ignore[attr-defined]


def test_a_successful_save_is_in_the_report_and_the_metrics(
    tmp_path: Path, synthetic_engine: str
) -> None:
    save = Save(True, "compile cache synthetic-key: saved 4096 bytes to /persist/synthetic-key")
    sidecar, outcome, metrics = warm_with(tmp_path, synthetic_engine, save)
    assert outcome.status == "passed", outcome
    assert save.calls == [(sidecar.profile, None)], "saved once, for this engine"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cache_save"] == {"ok": True, "message": save.message}
    log = log_of(sidecar)
    assert save.message in log and "ERROR" not in log
    page = Scrape.parse(metrics)
    assert page.get(CACHE_SAVED, replica="synthetic") == 1.0
    assert page.get(CACHE_SAVE_FAILURES, replica="synthetic") == 0.0


def test_a_failed_save_is_loud_in_the_report_the_log_and_the_metrics(
    tmp_path: Path, synthetic_engine: str
) -> None:
    save = Save(False, "cache save exited 1: OSError: [Errno 28] No space left on device")
    sidecar, outcome, metrics = warm_with(tmp_path, synthetic_engine, save)
    # The engine is warm: the warm-up still passes (only the next cold start is slower).
    assert outcome.status == "passed" and outcome.exit_code == 0, outcome
    assert len(save.calls) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["outcome"] == "passed"
    assert report["cache_save"] == {"ok": False, "message": save.message}
    assert f"warmup: ERROR: compile cache NOT saved: {save.message}" in log_of(sidecar)
    page = Scrape.parse(metrics)
    assert page.get(CACHE_SAVED, replica="synthetic") == 0.0
    assert page.get(CACHE_SAVE_FAILURES, replica="synthetic") == 1.0
