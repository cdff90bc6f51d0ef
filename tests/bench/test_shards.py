"""bench.shards: how a cell's load is split over client processes, and the merged result."""

from __future__ import annotations

import pytest

from bench.client import Target
from bench.metrics import summarize
from bench.prompts import Calibration, PromptSet
from bench.shards import CellLoad, run_cell_load, shard_plan

PROMPTS = PromptSet(Calibration("chat", ("alpha", "beta"), 8), 12)


@pytest.mark.parametrize(
    ("concurrency", "processes", "plan"),
    [
        (10, 3, [(4, 0), (3, 4), (3, 7)]),  # 10 = 4 + 3 + 3; slots 0-3, 4-6, 7-9
        (8, 2, [(4, 0), (4, 4)]),
        (5, 1, [(5, 0)]),
        (1025, 3, [(342, 0), (342, 342), (341, 684)]),
    ],
)
def test_shard_plan_splits_streams_and_numbers_their_ramp_slots(concurrency, processes, plan):
    assert shard_plan(concurrency, processes) == plan


def test_one_process_up_to_the_threshold(synthetic):
    progress: list[int] = []
    load = run_cell_load(
        Target(synthetic, "synthetic"), PROMPTS, range(6), 3, 4, per_process=3,
        on_progress=progress.append,
    )  # fmt: skip
    assert isinstance(load, CellLoad) and load.processes == 1
    assert progress == [1, 2, 3, 4, 5, 6]  # one call per finished request, in order
    assert sorted(r.output_tokens for r in load.records) == [4] * 6


def test_above_the_threshold_every_process_reports_back(synthetic):
    """7 streams at 3 per process: 3 processes (3 + 2 + 2 streams), 14 requests merged."""
    seen: list[int] = []
    load = run_cell_load(
        Target(synthetic, "synthetic"), PROMPTS, range(14), 7, 3, per_process=3,
        on_progress=seen.append,
    )  # fmt: skip
    assert load.processes == 3 and not load.interrupted
    assert len(load.records) == 14 and all(r.ok for r in load.records)
    m = summarize(load.records)
    assert m["completed"] == 14 and m["output_tokens"] == 14 * 3
    assert m["peak_concurrency"] <= 7
    assert seen == sorted(seen) and all(0 <= n <= 14 for n in seen)
