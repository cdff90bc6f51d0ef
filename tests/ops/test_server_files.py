"""The MCP server over stdio, driven by the SDK's own client, on the tools that read files and on
bad input: no engine needed (the sweep runs and the warm-up report are written by the fixture).
Every tool error must be an MCP error result with a clear message, and the server must keep
answering after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.conftest import META, RUN_A, RUN_B
from tests.ops.support import TOOLS, data, over_stdio, text, write_run
from tests.support.process import free_port


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    """An ops server whose gateway and engine are absent (a free port nobody listens on)."""
    write_run(tmp_path / "bench", "20261130-090000", RUN_A, META)
    write_run(tmp_path / "bench", "20261130-100000", RUN_B, META)
    dead = f"http://127.0.0.1:{free_port()}"
    return {
        "OPS_GATEWAY_URL": dead,
        "OPS_ENGINE_URLS": dead,
        "OPS_BENCH_DIR": str(tmp_path / "bench"),
        "OPS_ENGINE_LOG_FILE": str(tmp_path / "no-engine.log"),
        "OPS_WARMUP_REPORT": str(tmp_path / "no-report.json"),
        "OPS_INTERNAL_TOKEN_FILE": str(tmp_path / "no-token"),
    }


def test_list_tools_gives_every_tool_with_both_schemas(offline_env: dict[str, str]) -> None:
    (tools,) = over_stdio(offline_env, [("list_tools", {})])
    by_name = {t.name: t for t in tools}
    assert set(by_name) == TOOLS
    for t in tools:
        assert t.description, t.name
        assert t.input_schema["type"] == "object", t.name
        assert t.output_schema and t.output_schema.get("type") == "object", t.name
    q = by_name["query_with_stats"].input_schema
    assert q["required"] == ["prompt"]
    assert q["properties"]["max_tokens"]["minimum"] == 1
    assert by_name["start_warmup"].annotations.read_only_hint is False
    assert by_name["get_metrics"].annotations.read_only_hint is True


def test_benchmark_tools_read_the_runs(offline_env: dict[str, str]) -> None:
    summary, compared, cost = over_stdio(
        offline_env,
        [
            ("get_benchmark_summary", {"run": "20261130-090000"}),
            ("compare_runs", {"a": "20261130-090000", "b": "latest"}),
            ("estimate_cost", {"run": "20261130-090000", "price_per_hour": 3.6}),
        ],
    )
    s = data(summary)
    assert (s["peak"]["output_throughput"], s["best_interactive"]["concurrency"]) == (520.0, 8)
    assert s["knees"][0]["concurrency"] == 8
    c = data(compared)
    assert (c["b"], c["regressed_cells"]) == ("20261130-100000", 1)
    k = data(cost)
    assert k["best_interactive"]["usd_per_1m_output"] == pytest.approx(2.0)  # 3.6/3600/500*1e6
    assert "2 USD per 1M output tokens" in text(cost)


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("get_benchmark_summary", {"run": "nope"}, "unknown run 'nope'"),
        ("get_benchmark_summary", {"run": "../../etc"}, "run"),
        ("compare_runs", {"a": "20261130-090000", "b": "missing"}, "unknown run 'missing'"),
        ("query_with_stats", {"prompt": "hi", "max_tokens": -5}, "max_tokens"),
        ("verify_model_health", {"max_tokens": 0}, "max_tokens"),
        ("estimate_cost", {"run": "latest", "price_per_hour": "abc"}, "price_per_hour"),
        ("estimate_cost", {"run": "latest", "price_per_hour": -1}, "price_per_hour"),
        ("estimate_cost", {"run": "latest"}, "no price"),
        ("start_warmup", {}, "actions are disabled"),
        ("get_metrics", {"window_minutes": 0}, "window_minutes"),
    ],
)
def test_bad_input_is_a_tool_error_and_the_server_stays_up(
    offline_env: dict[str, str], tool: str, args: dict[str, object], message: str
) -> None:
    bad, after = over_stdio(
        offline_env, [(tool, args), ("get_benchmark_summary", {"run": "latest"})]
    )
    assert bad.is_error, text(bad)
    assert message in text(bad)
    assert data(after)["run"] == "20261130-100000"  # the same server answers the next call


def test_absent_stack_gives_clear_errors_not_crashes(offline_env: dict[str, str]) -> None:
    url = offline_env["OPS_ENGINE_URLS"]
    metrics, query, status, layout = over_stdio(
        offline_env,
        [
            ("get_metrics", {}),
            ("query_with_stats", {"prompt": "hi", "max_tokens": 4}),
            ("get_system_status", {}),
            ("get_memory_layout", {}),
        ],
    )
    assert metrics.is_error and f"engine at {url}" in text(metrics)
    assert "connection refused" in text(metrics)
    assert query.is_error and "connection refused" in text(query)
    s = data(status)  # a status report, not an error: it says what is down
    assert s["gateway"]["serving"] is False and s["engines"][0]["state"] == "down"
    assert s["warmup_report"]["found"] is False
    m = data(layout)  # the model's estimate still comes; the engine's part says why it is absent
    assert m["engine_reported"] is None and m["engine_log_note"] == "engine log missing"
    assert m["model"]["kv_cache_tokens"] == 1_342_177  # cpu profile: hand-worked in test_capacity
