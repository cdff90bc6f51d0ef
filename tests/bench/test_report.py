"""CSV, JSON and markdown are written from the same rows and say the same thing."""

from __future__ import annotations

import csv
import json

from bench import report
from bench.analysis import Policy, derive
from bench.compare import compare, delta, print_compare
from bench.plots import write_heatmaps

POLICY = Policy()


def rows(scale: float = 1.0) -> list[dict]:
    out = []
    for ctx in (128, 1024):
        for conc in (1, 4):
            out.append(derive({
                "context": ctx, "concurrency": conc, "output_len": 16, "status": "ok",
                "reason": "", "requests_planned": 8, "requests": 8, "completed": 8,
                "error_rate": 0.0, "output_throughput": scale * 100.0 * conc * (2048 / ctx),
                "total_throughput": 1000.0 * conc, "ttft_ms_p50": 10.0 * conc,
                "ttft_ms_p99": 20.0 * conc, "tpot_ms_p50": 2.5, "itl_ms_p99": 3.0,
                "itl_ms_max": 4.0, "slo_attainment": 1.0, "observed_concurrency": conc,
            }, POLICY))  # fmt: skip
    out.append(
        derive(
            {
                "context": 4096,
                "concurrency": 1,
                "output_len": 16,
                "status": "skipped_max_len",
                "reason": "4096 + 16 > 2048",
            },
            POLICY,
        )
    )
    return out


def test_csv_json_markdown_agree(tmp_path):
    meta = {"url": "http://x", "model": "m", "contexts": [128, 1024, 4096]}
    data = rows()
    report.write_all(meta, data, POLICY, tmp_path)
    with (tmp_path / "cells.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    doc = json.loads((tmp_path / "cells.json").read_text())
    assert doc["columns"] == report.COLUMNS == list(csv_rows[0].keys())
    assert len(csv_rows) == len(doc["cells"]) == 5
    for c, j in zip(csv_rows, doc["cells"], strict=True):
        for key in report.COLUMNS:
            jv = j[key]
            assert c[key] == ("" if jv is None else str(jv)), key
    md = (tmp_path / "report.md").read_text()
    top = max(doc["cells"], key=lambda r: r["output_throughput"] or 0)
    assert f"**Peak throughput**: {report.fmt(top['output_throughput'])} output tok/s" in md
    assert f"at context {top['context']} tokens, concurrency {top['concurrency']}" in md
    assert "| 4096 | len |" in md  # the skipped cell is marked, not blank
    assert "4096 + 16 > 2048" in md


def test_heatmaps_are_pngs(tmp_path):
    paths = write_heatmaps(rows(), tmp_path)
    assert len(paths) == 4
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_flags_regressions(tmp_path, capsys):
    assert delta(100.0, 90.0) == -0.1 and delta(None, 1.0) is None
    items = compare(rows(1.0), rows(0.8))
    measured = [i for i in items if i["status_a"] == "ok"]
    assert all("output_throughput" in i["regressions"] for i in measured)
    assert not any(i["regressions"] for i in compare(rows(), rows()))
    for name, scale in (("a", 1.0), ("b", 0.8)):
        (tmp_path / name).mkdir()
        report.write_all({"started": name}, rows(scale), POLICY, tmp_path / name)
    from rich.console import Console

    n = print_compare(tmp_path / "a", tmp_path / "b", Console(width=200), 0.05)
    assert n == 4
    assert "-20.0%" in capsys.readouterr().out
