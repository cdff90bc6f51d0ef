"""One warmed gateway in front of the session's engine, and the environment that points an ops
server at them (plus sweep runs and a warm-up report written here, for the tools that read
files). Every ops test shares these; each test spawns its own short-lived ops server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ops.support import cell, write_run
from tests.support.engine import Engine
from tests.support.gateway import RunningGateway, mark_warm, run_gateway

# Hand-worked runs (tests/ops/test_tools.py works out every figure from these):
#   context 128: 100 -> 500 -> 520 tok/s at concurrency 1, 8, 32; 520 < 1.1 x 500: knee at 8;
#   SLO attainment 1.0, 0.995, 0.9 (policy 0.99): 1 and 8 pass, 32 fails.
#   Peak 520 (128 x 32); best interactive 500 (128 x 8).
RUN_A = [
    cell(128, 1, 100.0, 300.0, 1.0),
    cell(128, 8, 500.0, 1500.0, 0.995),
    cell(128, 32, 520.0, 1560.0, 0.9),
]
#   run B: concurrency 8 drops to 400 tok/s (-20%: a regression); 32 rises to 600 (+15.4%).
RUN_B = [
    cell(128, 1, 100.0, 300.0, 1.0),
    cell(128, 8, 400.0, 1200.0, 0.995),
    cell(128, 32, 600.0, 1800.0, 0.9),
]
META = {"model": "gemma-4-tiny", "policy": {"attainment": 0.99, "knee_gain": 0.10, "chips": 1}}
REPORT = {"outcome": "passed", "failed_step": None, "error": None, "started": "2026-11-30T09:00:00+0000",
          "duration_s": 12.5, "stalls": [], "engine": {"instance": "1.0"}}  # fmt: skip


@dataclass
class OpsStack:
    engine: Engine
    gateway: RunningGateway
    bench_dir: Path
    env: dict[str, str]

    @property
    def engine_log(self) -> Path:
        return Path(self.env["OPS_ENGINE_LOG_FILE"])


@pytest.fixture(scope="session")
def ops_gateway(engine: Engine) -> Iterator[RunningGateway]:
    # The product defaults, stale-metrics hold included (a held admission queues, it does not
    # fail: the tools' requests still complete).
    with run_gateway(engine.url) as gw:
        mark_warm(gw)
        yield gw


@pytest.fixture(scope="session")
def ops_stack(
    engine: Engine, ops_gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory
) -> OpsStack:
    tmp = tmp_path_factory.mktemp("ops")
    bench = tmp / "bench"
    write_run(bench, "20261130-090000", RUN_A, META)
    write_run(bench, "20261130-100000", RUN_B, META)
    report = tmp / "warmup-report.json"
    report.write_text(json.dumps(REPORT))
    hot = Path(engine.env["CACHE_HOT_DIR"])
    env = {
        "OPS_GATEWAY_URL": ops_gateway.url,
        "OPS_ENGINE_URLS": engine.url,
        "OPS_INTERNAL_TOKEN_FILE": str(ops_gateway.token_file),
        # the file the launcher (python -m entrypoint serve) keeps: its default place
        "OPS_ENGINE_LOG_FILE": str(hot / "engine.log"),
        "OPS_BENCH_DIR": str(bench),
        "OPS_WARMUP_REPORT": str(report),
        "CACHE_HOT_DIR": engine.env["CACHE_HOT_DIR"],
        "CACHE_PERSIST_DIR": engine.env["CACHE_PERSIST_DIR"],
        "OPS_REQUEST_TIMEOUT_S": "60",
    }
    return OpsStack(engine=engine, gateway=ops_gateway, bench_dir=bench, env=env)
