"""Drive the ops server with the MCP SDK's own client, over stdio or streamable HTTP."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from tests.support.process import REPO

PROFILE = REPO / "env" / "cpu.env"
T = TypeVar("T")
CALL_TIMEOUT_S = 180.0  # outer bound of one whole client session (spawn + calls)


def stdio_params(env: Mapping[str, str]) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "ops", "--profile", str(PROFILE)],
        env={**_base_env(), **env},
        cwd=str(REPO),
    )


def _base_env() -> dict[str, str]:
    import os

    return {
        k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "TMPDIR")
    }


def over_stdio(env: Mapping[str, str], calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Spawn ``python -m ops`` over stdio, run ``calls`` in order (``("list_tools", {})`` lists
    the tools), return the results."""

    async def main() -> list[Any]:
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with (
                stdio_client(stdio_params(env)) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return [await _one(session, name, args) for name, args in calls]

    return anyio.run(main)


def with_stdio_session(env: Mapping[str, str], work: Callable[[ClientSession], Awaitable[T]]) -> T:
    """Spawn ``python -m ops`` over stdio and run ``work(session)`` on one initialised session."""

    async def main() -> T:
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with (
                stdio_client(stdio_params(env)) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await work(session)

    return anyio.run(main)


def over_http(url: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    async def main() -> list[Any]:
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with (
                streamable_http_client(url) as streams,
                ClientSession(streams[0], streams[1]) as session,
            ):
                await session.initialize()
                return [await _one(session, name, args) for name, args in calls]

    return anyio.run(main)


async def _one(session: ClientSession, name: str, args: dict[str, Any]) -> Any:
    if name == "list_tools":
        return (await session.list_tools()).tools
    return await session.call_tool(name, args)


def data(result: CallToolResult) -> dict[str, Any]:
    """The structured result of a successful call (fails the test on an error result)."""
    assert not result.is_error, f"tool error: {text(result)}"
    assert result.structured_content is not None
    return result.structured_content


def text(result: CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def write_run(root: Path, name: str, cells: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "cells.json").write_text(json.dumps({"meta": meta, "cells": cells}))
    return run


def cell(
    context: int,
    concurrency: int,
    out_tok_s: float,
    total_tok_s: float,
    attainment: float,
    **extra: Any,
) -> dict[str, Any]:
    """A measured ok cell: the columns the sweep's judgements read (bench/README.md)."""
    return {
        "context": context,
        "concurrency": concurrency,
        "status": "ok",
        "requests": 5 * concurrency,
        "observed_concurrency": float(concurrency),
        "loop_lag_ms_p99": 1.0,
        "itl_ms_max": 20.0,
        "itl_ms_p99": 10.0,
        "output_throughput": out_tok_s,
        "total_throughput": total_tok_s,
        "slo_attainment": attainment,
        "ttft_ms_p50": 10.0 * concurrency,
        "ttft_ms_p99": 20.0 * concurrency,
        "tpot_ms_p50": 2.0,
        "error_rate": 0.0,
        **extra,
    }


# Every tool the ops server offers (both transports list exactly these).
TOOLS = {
    "get_system_status", "verify_model_health", "get_active_models", "get_system_details",
    "get_metrics", "query_with_stats", "get_memory_layout", "get_benchmark_summary",
    "compare_runs", "estimate_cost", "start_warmup", "get_tenant_usage",
}  # fmt: skip
