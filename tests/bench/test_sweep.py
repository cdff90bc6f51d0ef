"""A small real sweep against the CPU engine: every output, and they agree."""

from __future__ import annotations

import csv
import json

import httpx
import pytest

from bench import report
from bench.metrics import Slo
from bench.prompts import Tokenizer, calibrate, prepare
from bench.sweep import Sweep, SweepConfig

pytestmark = pytest.mark.engine


def test_prompts_have_the_exact_token_count(engine):
    model = engine.settings.served_model_name
    with httpx.Client(timeout=30) as http:
        for api in ("chat", "completions"):
            tok = Tokenizer(http, engine.url, model, api)
            cal = calibrate(tok)
            prompts = prepare(tok, cal, 100, 20, seed=1)
            assert {tok.count(prompts.text(i)) for i in range(0, 20, 5)} == {100}
            assert prompts.text(0) != prompts.text(1)  # no shared prefix by default


def test_small_sweep_writes_every_output_and_they_agree(engine, tmp_path):
    cfg = SweepConfig(
        url=engine.url, contexts=[64, 300, 2040], concurrencies=[1, 4], output_len=16,
        requests=8, warmup=1, slo=Slo(ttft_ms=5000, tpot_ms=1000), out_dir=tmp_path,
    )  # fmt: skip
    sweep = Sweep(cfg)
    assert sweep.run() == tmp_path
    names = {p.name for p in tmp_path.iterdir()}
    assert {"cells.csv", "cells.json", "report.md"} <= names
    assert {
        f"heatmap_{k}.png"
        for k in ("output_throughput", "ttft_ms_p50", "ttft_ms_p99", "error_rate")
    } <= names

    doc = json.loads((tmp_path / "cells.json").read_text())
    cells = {(c["context"], c["concurrency"]): c for c in doc["cells"]}
    assert len(cells) == 6
    for ctx in (64, 300):
        for conc in (1, 4):
            c = cells[(ctx, conc)]
            assert c["status"] == "ok", c
            assert c["completed"] == 8 and c["output_tokens"] == 8 * 16
            assert c["input_tokens"] == 8 * ctx  # the server counted exactly what we built
            assert c["output_throughput"] > 0 and c["ttft_ms_p50"] > 0 and c["tpot_ms_p50"] > 0
    # 2040 prompt + 16 output > max-model-len 2048
    assert cells[(2040, 1)]["status"] == cells[(2040, 4)]["status"] == "skipped_max_len"

    with (tmp_path / "cells.csv").open() as fh:
        for row in csv.DictReader(fh):
            j = cells[(int(row["context"]), int(row["concurrency"]))]
            for key in report.COLUMNS:
                assert row[key] == ("" if j[key] is None else str(j[key])), key

    md = (tmp_path / "report.md").read_text()
    top = max(
        (c for c in doc["cells"] if c["status"] == "ok"), key=lambda c: c["output_throughput"]
    )
    assert f"{report.fmt(top['output_throughput'])} output tok/s" in md
    assert f"context {top['context']} tokens, concurrency {top['concurrency']}" in md
    assert "| 2040 | len | len |" in md
