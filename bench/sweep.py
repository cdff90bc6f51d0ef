"""The concurrency x context sweep: discover the server, plan cells, run them, write outputs.

Order of work per cell: build and verify its prompts (fresh random ones per cell, so no cell
warms the prefix cache for another), send warm-up requests at the cell's own lengths, then
the measured requests. CSV/JSON/markdown are rewritten after every cell, so a crash or Ctrl-C
loses at most the cell in progress; Ctrl-C during a cell keeps the requests that finished and
marks the cell ``interrupted``.
"""

from __future__ import annotations

import datetime as dt
import platform
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench import analysis, report
from bench.analysis import Policy
from bench.client import Api, Target
from bench.grid import INTERRUPTED, SKIPPED, Cell, Grid
from bench.metrics import Slo, summarize
from bench.prompts import Tokenizer, calibrate, prepare
from bench.shards import run_cell_load, run_local


@dataclass
class SweepConfig:
    url: str
    contexts: list[int]
    concurrencies: list[int]
    output_len: int
    model: str | None = None
    api: Api = "chat"
    api_key: str | None = None
    requests: int | None = None
    multiplier: float = 5.0
    min_requests: int = 20
    warmup: int = 2
    timeout_s: float = 600.0
    max_error_rate: float = 0.05
    slo: Slo = field(default_factory=Slo)
    policy: Policy = field(default_factory=Policy)
    out_dir: Path = Path("results/bench")
    seed: int | None = None
    shared_prefix: float = 0.0
    per_process: int = 512
    max_model_len: int | None = None
    temperature: float = 0.0
    plots: bool = True


@dataclass
class Server:
    """What the target told us about itself."""

    model: str
    max_model_len: int | None
    version: str | None


def discover(client: httpx.Client, url: str, model: str | None) -> Server:
    """Model id and max-model-len from ``/v1/models`` (vLLM reports both); version if any."""
    resp = client.get(url.rstrip("/") + "/v1/models")
    resp.raise_for_status()
    data = resp.json().get("data") or []
    entry = next((m for m in data if m.get("id") == model), data[0] if data else {})
    version = None
    try:
        v = client.get(url.rstrip("/") + "/version", timeout=5)
        version = v.json().get("version") if v.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        pass
    return Server(model or entry.get("id", ""), entry.get("max_model_len"), version)


def cell_weight(cell: Cell) -> float:
    """Rough relative cost of one request, for the ETA: decode tokens + prefill tokens / 16."""
    return cell.output + cell.context / 16.0


def row_of(cell: Cell, policy: Policy) -> dict:
    row = {
        "context": cell.context,
        "concurrency": cell.concurrency,
        "output_len": cell.output,
        "status": cell.status,
        "reason": cell.reason,
        "requests_planned": cell.requests,
    }
    row |= cell.metrics
    return analysis.derive(row, policy)


def default_out_dir(base: Path) -> Path:
    return base / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


class Sweep:
    """One run of the sweep; ``run()`` returns the output directory."""

    def __init__(self, cfg: SweepConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**31)
        self.meta: dict = {}
        self.grid: Grid | None = None

    def rows(self) -> list[dict]:
        return [row_of(c, self.cfg.policy) for c in self.grid.cells] if self.grid else []

    def write(self, plots: bool = False) -> None:
        self.meta["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        rows = self.rows()
        report.write_all(self.meta, rows, self.cfg.policy, self.cfg.out_dir)
        if plots:
            from bench.plots import write_heatmaps

            write_heatmaps(rows, self.cfg.out_dir)

    def run(self) -> Path:
        cfg = self.cfg
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        with httpx.Client(headers=headers, timeout=60) as http:
            server = discover(http, cfg.url, cfg.model)
            max_len = cfg.max_model_len or server.max_model_len
            tok = Tokenizer(http, cfg.url, server.model, cfg.api)
            cal = calibrate(tok)
            self.grid = Grid.plan(
                cfg.contexts,
                cfg.concurrencies,
                cfg.output_len,
                max_len,
                min_context=cal.min_tokens,
                requests=cfg.requests,
                multiplier=cfg.multiplier,
                minimum=cfg.min_requests,
                warmup=cfg.warmup,
            )
            target = Target(
                cfg.url,
                server.model,
                api=cfg.api,
                api_key=cfg.api_key,
                timeout_s=cfg.timeout_s,
                temperature=cfg.temperature,
            )
            self.meta = {
                "url": cfg.url,
                "api": cfg.api,
                "model": server.model,
                "server_version": server.version,
                "max_model_len": max_len,
                "contexts": self.grid.contexts,
                "concurrencies": self.grid.concurrencies,
                "output_len": cfg.output_len,
                "seed": self.seed,
                "shared_prefix": cfg.shared_prefix,
                "prompt_overhead_tokens": cal.overhead,
                "slo": asdict(cfg.slo),
                "policy": asdict(cfg.policy),
                "max_error_rate": cfg.max_error_rate,
                "timeout_s": cfg.timeout_s,
                "streams_per_process": cfg.per_process,
                "host": platform.node(),
                "python": platform.python_version(),
                "command": shlex.join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
                "started": dt.datetime.now().isoformat(timespec="seconds"),
                "interrupted": False,
            }
            self.console.print(
                f"[bold]bench sweep[/] {cfg.url} model={server.model} api={cfg.api} "
                f"max-model-len={max_len} cells={len(self.grid.cells)} "
                f"(runnable {sum(c.runnable for c in self.grid)}) out={cfg.out_dir}"
            )
            interrupted = self._run_cells(tok, cal, target)
        self.meta["interrupted"] = interrupted
        self.grid.finish()
        self.write(plots=cfg.plots)
        return cfg.out_dir

    def _run_cells(self, tok: Tokenizer, cal, target: Target) -> bool:
        cfg, grid = self.cfg, self.grid
        assert grid is not None
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        total_w = sum(c.requests * cell_weight(c) for c in grid if c.runnable)
        with progress:
            overall = progress.add_task("sweep", total=total_w)
            for index, cell in enumerate(grid.cells):
                if not cell.runnable:
                    continue
                label = f"ctx {cell.context} x c {cell.concurrency}"
                task = progress.add_task(label, total=cell.requests)
                w = cell_weight(cell)
                base = progress.tasks[overall].completed

                def on_progress(n: int, task=task, base=base, w=w) -> None:
                    progress.update(task, completed=n)
                    progress.update(overall, completed=base + n * w)

                try:
                    prompts = prepare(
                        tok,
                        cal,
                        cell.context,
                        cell.requests + cell.warmup,
                        seed=self.seed * 10_007 + index,
                        shared_prefix=cfg.shared_prefix,
                    )
                    if cell.warmup:
                        progress.update(task, description=f"{label} (warm-up)")
                        warm = run_local(
                            target,
                            prompts,
                            range(cell.requests, cell.requests + cell.warmup),
                            min(cell.warmup, cell.concurrency),
                            cell.output,
                        )
                        if warm.interrupted:
                            raise KeyboardInterrupt
                        progress.update(task, description=label)
                    t0 = time.perf_counter()
                    load = run_cell_load(
                        target,
                        prompts,
                        range(cell.requests),
                        cell.concurrency,
                        cell.output,
                        per_process=cfg.per_process,
                        on_progress=on_progress,
                    )
                except KeyboardInterrupt:
                    cell.status, cell.reason = INTERRUPTED, "Ctrl-C before measurement"
                    self.write()
                    return True
                metrics = summarize(load.records, cfg.slo)
                metrics |= {
                    "client_processes": load.processes,
                    "loop_lag_ms_p99": load.loop_lag_ms_p99,
                    "loop_lag_ms_max": load.loop_lag_ms_max,
                    "first_error": next((r.error for r in load.records if not r.ok), None),
                }
                if load.interrupted:
                    cell.metrics = metrics
                    cell.status, cell.reason = INTERRUPTED, "Ctrl-C during measurement"
                    self.write()
                    return True
                grid.record(cell, metrics, cfg.max_error_rate)
                progress.update(task, completed=cell.requests, visible=False)
                # Cells skipped by this result leave the ETA's total.
                skipped_w = sum(
                    c.requests * cell_weight(c)
                    for c in grid
                    if c.status in SKIPPED
                    and c.reason.startswith(f"concurrency {cell.concurrency}")
                    and c.context == cell.context
                )
                total_w -= skipped_w
                progress.update(overall, total=total_w, completed=base + cell.requests * w)
                self._print_cell(cell, time.perf_counter() - t0)
                self.write()
        return False

    def _print_cell(self, cell: Cell, took: float) -> None:
        m = cell.metrics
        self.console.print(
            f"  ctx {cell.context:>6} c {cell.concurrency:>5}: {cell.status:<6} "
            f"out {m.get('output_throughput', 0):>9.1f} tok/s  "
            f"TTFT p50 {report.fmt(m.get('ttft_ms_p50'))} p99 {report.fmt(m.get('ttft_ms_p99'))} "
            f"ms  TPOT p50 {report.fmt(m.get('tpot_ms_p50'), 2)} ms  "
            f"err {m.get('error_rate', 0):.1%}  ({took:.1f} s)"
        )
