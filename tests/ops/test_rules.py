"""Prometheus rules (ops/prometheus/rules.yml) and the Grafana dashboard (ops/grafana/
dashboard.json): promtool checks and unit-tests the rules; every metric either names must be one
the real stack exports (scraped from the session's engine, a gateway in front of it, and the
warm-up sidecar's status server over that engine)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from protocol.prometheus import Scrape
from tests.ops.conftest import OpsStack
from tests.support.process import REPO
from warmup.status import StatusServer, Tracked, WarmState

RULES = REPO / "ops" / "prometheus" / "rules.yml"
RULES_TEST = REPO / "ops" / "prometheus" / "rules_test.yml"
DASHBOARD = REPO / "ops" / "grafana" / "dashboard.json"
# metric-like identifiers in PromQL: vllm:*, gateway_*, warmup_*, and Prometheus' own `up`
METRIC = re.compile(
    r"(?<![\w:])(vllm:[a-z_]+|gateway_[a-z_]+|warmup_[a-z_]+|up)(?=\s*[{\[)]|\s*(?:==|>|<|$|\s))"
)
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: run .ci/install-promtool.sh (CI installs it in .ci/run)"
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )


def test_promtool_checks_the_rules() -> None:
    r = run("check", "rules", RULES.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 18 rules found" in r.stdout


def test_promtool_unit_tests_pass() -> None:
    r = run("test", "rules", RULES_TEST.name)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("expr", "broken", "alert"),
    [
        ("kv_cache_usage_perc) > 0.95", "kv_cache_usage_perc) > 0.99", "Gemma4KVCacheNearFull"),
        ("warmup_compile_cache_saved == 0", "warmup_compile_cache_saved < 0",
         "Gemma4CompileCacheNotSaved"),
    ],
)  # fmt: skip
def test_promtool_unit_tests_can_fail(tmp_path: Path, expr: str, broken: str, alert: str) -> None:
    """The same tests against rules with a threshold moved must fail (they test something)."""
    assert expr in RULES.read_text()
    (tmp_path / "rules.yml").write_text(RULES.read_text().replace(expr, broken))
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yml")
    r = subprocess.run(
        [promtool(), "test", "rules", "rules_test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode != 0 and alert in r.stdout + r.stderr


def rule_exprs() -> list[str]:
    import yaml

    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def names_in(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC.findall(e)}


def test_the_name_scanner_finds_names() -> None:
    assert names_in(["sum(rate(vllm:a_total[5m])) / gateway_b", 'up{job="x"} == 0',
                     "warmup_c == 0"]) == {"vllm:a_total", "gateway_b", "up", "warmup_c"}  # fmt: skip
    assert len(names_in(rule_exprs())) >= 12 and len(names_in(dashboard_exprs())) >= 25


def exported(name: str, scrape: Scrape) -> bool:
    names = scrape.names()
    if name in names:
        return True
    return any(name.endswith(s) and name[: -len(s)] in names for s in SUFFIXES)


def sidecar_metrics(engine_url: str) -> str:
    """The warm-up status server's /metrics (warmup/status.py, the real server on a loopback
    port) for one replica whose compile-cache save failed: the save gauge exists only once a save
    ran, so a fresh sidecar would not show every name."""
    warm = WarmState("passed", "1.0")
    warm.saved(False)

    async def go() -> str:
        server = StatusServer([Tracked("127.0.0.1:8000", engine_url, warm)])
        port = await server.start("127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                resp = await client.get(f"http://127.0.0.1:{port}/metrics")
                resp.raise_for_status()
                return resp.text
        finally:
            await server.close()

    return asyncio.run(go())


@pytest.mark.engine
def test_every_metric_used_is_exported_by_the_real_stack(ops_stack: OpsStack) -> None:
    engine = Scrape.parse(httpx.get(f"{ops_stack.engine.url}/metrics", timeout=30).text)
    gateway = Scrape.parse(ops_stack.gateway.metrics_text())
    sidecar = Scrape.parse(sidecar_metrics(ops_stack.engine.url))
    used = names_in(rule_exprs()) | names_in(dashboard_exprs())
    source = {"vllm:": engine, "warmup_": sidecar}
    missing = sorted(
        n for n in used - {"up"}  # `up` is recorded by Prometheus itself, per scrape target
        if not exported(n, next((v for k, v in source.items() if n.startswith(k)), gateway))
    )  # fmt: skip
    assert missing == []
    assert any(n.startswith("warmup_") for n in used), "the sidecar's names are checked too"
    assert not exported("vllm:no_such_metric", engine)  # the check can fail
    assert not exported("warmup_no_such_metric", sidecar)
