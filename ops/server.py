"""The MCP server: each tool's input schema (pydantic ``Field`` bounds), its output schema (the
models below) and a one-paragraph text summary beside the structured result.

Bad input never reaches a tool (the SDK validates the arguments against the schema and answers
with an error result); a tool's own failures (``OpsError``: unreachable service, unknown run,
actions off) become ``ToolError``: an MCP error result with the message, the server stays up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ops.config import OpsConfig
from ops.service import Ops, OpsError

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
ACTION = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

RunName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="a sweep run: a directory name under OPS_BENCH_DIR (see get_benchmark_summary's "
        "error for the list), or 'latest'",
    ),
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class SystemStatus(_Out):
    profile: str
    gateway: dict[str, Any]
    engines: list[dict[str, Any]]
    warmup_report: dict[str, Any]
    ops_uptime_s: float
    checked_at: str


class ModelHealth(_Out):
    passed: bool
    latency_s: float | None
    detail: str
    text: str | None = None
    http_status: int | None = None
    completion_tokens: int | None = None


class ActiveModels(_Out):
    models: list[dict[str, Any]]
    profile_max_model_len: int


class SystemDetails(_Out):
    profile: str
    platform: str
    hardware: dict[str, Any]
    model: str
    engine_image: str
    vllm_version_running: str | None
    engine_argv: list[str]
    compile_cache_key: str
    compile_cache_seeded: bool | None


class Metrics(_Out):
    engine_url: str
    engine: dict[str, Any]
    engine_whole_run: dict[str, Any]
    engine_recent: dict[str, Any] | None
    gateway: dict[str, Any] | None
    gateway_whole_run: dict[str, Any] | None
    gateway_recent: dict[str, Any] | None


class QueryStats(_Out):
    text: str
    ttft_s: float | None
    total_s: float | None
    output_tokens: int | None
    prompt_tokens: int | None
    tokens_per_s: float | None


class MemoryLayout(_Out):
    engine_log: str
    engine_reported: dict[str, Any] | None
    model: dict[str, Any] | None
    model_minus_reported_pct: dict[str, Any] | None


class BenchmarkSummary(_Out):
    run: str
    cells: int
    peak: dict[str, Any] | None
    best_interactive: dict[str, Any] | None
    knees: list[dict[str, Any]]
    slo_grid: dict[str, dict[str, str]]


class RunComparison(_Out):
    a: str
    b: str
    peak_delta: float | None
    regressed_cells: int
    cells: list[dict[str, Any]]


class CostEstimate(_Out):
    run: str
    price_per_hour_usd: float
    peak: dict[str, Any] | None
    best_interactive: dict[str, Any] | None
    profiles: list[dict[str, Any]]


class TenantUsage(_Out):
    keys: list[dict[str, Any]]
    engine_busy_seconds: float | None
    priced: bool
    window: str


class ActionResult(_Out):
    started: bool


def _fmt(x: Any, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}{unit}"
    return f"{x}{unit}"


async def _run(
    model: type[BaseModel],
    work: Awaitable[dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
) -> CallToolResult:
    try:
        data = await work
    except OpsError as exc:
        raise ToolError(str(exc)) from exc
    structured = model.model_validate(data).model_dump(mode="json")
    return CallToolResult(
        content=[TextContent(type="text", text=summary(data))], structured_content=structured
    )


async def _sync(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return fn()


def build(config: OpsConfig) -> MCPServer:
    ops = Ops(config)
    server = MCPServer(
        "gemma4-ops",
        instructions=(
            "Operations view of a Gemma 4 serving stack (vLLM engine behind an OpenAI-compatible "
            "gateway). Every figure is measured from the stack or computed from a documented "
            "model; tools that change anything need OPS_ALLOW_ACTIONS=true."
        ),
    )

    @server.tool(annotations=READ_ONLY)
    async def get_system_status() -> Annotated[CallToolResult, SystemStatus]:
        """Gateway serving state and reason, each engine instance's state and uptime, the
        warm-up state the gateway holds and the last warm-up report's verdict."""

        def text(d: dict[str, Any]) -> str:
            g = d["gateway"]
            engines = "; ".join(
                f"{e['url']} {e['state']}"
                + (f", up {_fmt(e.get('uptime_s'), ' s')}" if e.get("uptime_s") else "")
                for e in d["engines"]
            )
            w = d["warmup_report"]
            verdict = w.get("verdict") if w.get("found") else "no report"
            return (
                f"gateway {g['url']}: {'serving' if g.get('serving') else 'NOT serving'} ({g.get('reason')}); "
                f"engines: {engines}; last warm-up report: {verdict}"
            )

        return await _run(SystemStatus, ops.system_status(), text)

    @server.tool(annotations=READ_ONLY)
    async def verify_model_health(
        prompt: Annotated[
            str, Field(min_length=1, max_length=2000, description="the user message")
        ] = "Are you working? Answer in one sentence.",
        max_tokens: Annotated[int, Field(ge=1, le=256, description="tokens to generate")] = 16,
    ) -> Annotated[CallToolResult, ModelHealth]:
        """One short real chat through the gateway: passed when it answers 200 with generated
        tokens; latency is the whole request, measured here."""

        def text(d: dict[str, Any]) -> str:
            head = "PASSED" if d["passed"] else "FAILED"
            return f"{head} in {_fmt(d.get('latency_s'), ' s')}: {d.get('detail')}; text: {d.get('text')!r}"

        return await _run(ModelHealth, ops.verify_model_health(prompt, max_tokens), text)

    @server.tool(annotations=READ_ONLY)
    async def get_active_models() -> Annotated[CallToolResult, ActiveModels]:
        """The models the gateway serves (its /v1/models) with their maximum context."""

        def text(d: dict[str, Any]) -> str:
            return (
                "; ".join(f"{m['id']} (max context {m.get('max_model_len')})" for m in d["models"])
                or "none"
            )

        return await _run(ActiveModels, ops.active_models(), text)

    @server.tool(annotations=READ_ONLY)
    async def get_system_details() -> Annotated[CallToolResult, SystemDetails]:
        """Profile, platform, hardware (TPU type/topology/chips from the profile; cores and
        memory on CPU), engine image and vLLM version, the exact rendered engine flags, the
        compile-cache key and whether the cache was seeded at the engine's start."""

        def text(d: dict[str, Any]) -> str:
            return (
                f"profile {d['profile']} ({d['platform']}), hardware {d['hardware']}, model {d['model']}, "
                f"image {d['engine_image']}, vLLM {d.get('vllm_version_running') or 'n/a (engine down)'}, "
                f"cache key {d['compile_cache_key']} ({d.get('compile_cache_at_start') or 'start not logged'})"
            )

        return await _run(SystemDetails, ops.system_details(), text)

    @server.tool(annotations=READ_ONLY)
    async def get_metrics(
        window_minutes: Annotated[
            float,
            Field(
                gt=0, le=1440, description="recent window: the kept scrape closest to this far back"
            ),
        ] = 5.0,
        sample_seconds: Annotated[
            float,
            Field(
                ge=0,
                le=60,
                description="with no kept scrape in the window: take two scrapes this far apart (0: don't)",
            ),
        ] = 0.0,
    ) -> Annotated[CallToolResult, Metrics]:
        """Running/waiting requests, KV usage, totals and mean TTFT / E2E / ITL / queue time
        from the engine's histograms (sum/count), and the gateway's own (rejections by reason,
        queue depth, TTFT at the edge), over the whole run and over a recent window."""

        def text(d: dict[str, Any]) -> str:
            e, w = d["engine"], d["engine_whole_run"]
            return (
                f"engine: running {_fmt(e['running'])}, waiting {_fmt(e['waiting'])}, KV usage "
                f"{_fmt(e['kv_cache_usage'])}; whole run: {_fmt(w['requests_finished'])} requests, "
                f"mean TTFT {_fmt(w['mean_ttft_s'], ' s')}, E2E {_fmt(w['mean_e2e_s'], ' s')}, "
                f"ITL {_fmt(w['mean_itl_s'], ' s')}, queue {_fmt(w['mean_queue_s'], ' s')}; "
                f"recent: {'n/a' if not d['engine_recent'] else str(d['engine_recent']['span_s']) + ' s span'}"
            )

        return await _run(Metrics, ops.metrics(window_minutes * 60.0, sample_seconds), text)

    @server.tool(annotations=READ_ONLY)
    async def query_with_stats(
        prompt: Annotated[
            str, Field(min_length=1, max_length=20000, description="the user message")
        ],
        max_tokens: Annotated[int, Field(ge=1, le=4096, description="tokens to generate")] = 128,
    ) -> Annotated[CallToolResult, QueryStats]:
        """Stream one chat through the gateway: the text, TTFT, total time (to the last token),
        output tokens from the usage the engine reports, and tokens/s."""

        def text(d: dict[str, Any]) -> str:
            return (
                f"TTFT {_fmt(d['ttft_s'], ' s')}, total {_fmt(d['total_s'], ' s')}, "
                f"{d['output_tokens']} tokens, {_fmt(d['tokens_per_s'])} tok/s\n{d['text']}"
            )

        return await _run(QueryStats, ops.query_with_stats(prompt, max_tokens), text)

    @server.tool(annotations=READ_ONLY)
    async def get_memory_layout() -> Annotated[CallToolResult, MemoryLayout]:
        """What the engine logged at start (KV cache size in tokens, maximum concurrency at
        full context, memory lines) next to the capacity model's estimate for the same
        profile, with the difference in percent."""

        def text(d: dict[str, Any]) -> str:
            r, m = d["engine_reported"], d["model"]
            eng = (
                f"engine: {r['kv_cache_tokens']:,} tokens, {r['max_concurrency']}x"
                if r
                else f"engine: {d.get('engine_log_note')}"
            )
            mod = (
                f"model: {m['kv_cache_tokens']:,} tokens, {m['max_concurrency']}x"
                if m
                else "model: n/a"
            )
            return f"{eng}; {mod}; difference {d.get('model_minus_reported_pct')}"

        return await _run(MemoryLayout, _sync(ops.memory_layout), text)

    @server.tool(annotations=READ_ONLY)
    async def get_benchmark_summary(
        run: RunName = "latest",
    ) -> Annotated[CallToolResult, BenchmarkSummary]:
        """A sweep run's summary: peak throughput cell, saturation knee per context, SLO
        pass/fail grid, best interactive cell (the sweep's own definitions, bench/README.md)."""

        def text(d: dict[str, Any]) -> str:
            p, b = d["peak"], d["best_interactive"]
            return (
                f"run {d['run']} ({d['cells']} cells): peak "
                + (
                    f"{_fmt(p['output_throughput'])} tok/s at context {p['context']} x {p['concurrency']}"
                    if p
                    else "none"
                )
                + "; best interactive "
                + (
                    f"{_fmt(b['output_throughput'])} tok/s at {b['context']} x {b['concurrency']}"
                    if b
                    else "none"
                )
            )

        return await _run(BenchmarkSummary, _sync(lambda: ops.benchmark_summary(run)), text)

    @server.tool(annotations=READ_ONLY)
    async def compare_runs(
        a: RunName,
        b: RunName,
        threshold: Annotated[
            float, Field(gt=0, le=10, description="relative change counted as a regression")
        ] = 0.05,
    ) -> Annotated[CallToolResult, RunComparison]:
        """Deltas between two sweep runs, cell by cell (throughput, TTFT, TPOT, ITL, errors),
        regressions beyond the threshold flagged."""

        def text(d: dict[str, Any]) -> str:
            return f"{d['a']} -> {d['b']}: peak {_fmt(d['peak_delta'])} relative, {d['regressed_cells']} cell(s) regressed"

        return await _run(RunComparison, _sync(lambda: ops.compare_runs(a, b, threshold)), text)

    @server.tool(annotations=READ_ONLY)
    async def estimate_cost(
        run: RunName = "latest",
        price_per_hour: Annotated[
            float | None,
            Field(
                ge=0,
                le=10000,
                description="USD per hour for the whole deployment; default: the profile's PRICE_PER_HOUR_USD",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, CostEstimate]:
        """USD per 1M output and per 1M total tokens at the run's peak and best interactive
        cells (price / 3600 / tokens per second x 1e6), and the same for every profile that
        carries a price and has a matching run."""

        def text(d: dict[str, Any]) -> str:
            p, b = d["peak"], d["best_interactive"]
            return (
                f"at {d['price_per_hour_usd']} USD/h: peak "
                + (f"{_fmt(p['usd_per_1m_output'])} USD per 1M output tokens" if p else "n/a")
                + ", best interactive "
                + (f"{_fmt(b['usd_per_1m_output'])} USD per 1M output tokens" if b else "n/a")
            )

        return await _run(CostEstimate, _sync(lambda: ops.estimate_cost(run, price_per_hour)), text)

    @server.tool(annotations=READ_ONLY)
    async def get_tenant_usage(
        window_minutes: Annotated[
            float,
            Field(ge=0, le=1440, description="recent window (0: the whole run of the gateway)"),
        ] = 60.0,
    ) -> Annotated[CallToolResult, TenantUsage]:
        """Who used the accelerator: per API key, requests, tokens (prompt, completion, cached),
        chip-seconds charged by the gateway's ledger (engine busy time split by the keys'
        prefill and decode work) and their cost at the profile's PRICE_PER_HOUR_USD."""

        def text(d: dict[str, Any]) -> str:
            rows = "; ".join(
                f"{r['key']}: {r['requests']} req, {_fmt(r['chip_seconds'], ' chip-s')}"
                + (f", {_fmt(r['cost_usd'], ' USD', 4)}" if r["cost_usd"] is not None else "")
                for r in d["keys"]
            )
            return f"{d['window']}: {rows or 'no key used the engine'}"

        return await _run(TenantUsage, ops.tenant_usage(window_minutes * 60.0 or None), text)

    @server.tool(annotations=ACTION)
    async def start_warmup() -> Annotated[CallToolResult, ActionResult]:
        """Ask the gateway to start a warm-up run (an action: only with OPS_ALLOW_ACTIONS=true,
        through the gateway's authenticated internal routes)."""
        return await _run(ActionResult, ops.start_warmup(), lambda d: "warm-up started")

    @server.custom_route("/livez", methods=["GET"])
    async def livez(_request: Request) -> Response:
        """The HTTP transport's own liveness (no stack call), for supervisors and tests."""
        return JSONResponse({"status": "ok"})

    return server
