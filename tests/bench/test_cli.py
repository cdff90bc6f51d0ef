"""``python -m bench``: argument parsing, profile defaults, and the sweep/compare commands end
to end against the synthetic upstream."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fairness, kvrouting, overhead, replicas, synthetic, vllm_check
from bench.cli import _api_key, _profile_defaults, build_parser, cmd_compare, cmd_sweep, main
from bench.grid import int_list
from tests.support.process import REPO


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1,2,4", [1, 2, 4]),
        (" 5 , 7, ", [5, 7]),
        ("1..16", [1, 2, 4, 8, 16]),
        ("3..20", [3, 6, 12]),  # doubling from the low end, never past the high one
        ("64..64", [64]),
    ],
)
def test_int_list(text: str, values: list[int]) -> None:
    assert int_list(text) == values


def test_every_subcommand_is_wired() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    wired = {
        ("sweep",): cmd_sweep,
        ("compare", "a", "b"): cmd_compare,
        ("gateway",): overhead.cmd_gateway,
        ("fairness",): fairness.run,
        ("kvrouting",): kvrouting.run,
        ("replicas",): replicas.cmd_replicas,
        ("routing",): replicas.cmd_replicas,
        ("synthetic",): synthetic.cmd_synthetic,
        ("vllm-check",): vllm_check.cmd_vllm_check,
    }
    # every subcommand the parser has is listed here (a new one must be added), and each runs
    # its own command function
    assert sorted(sub.choices) == sorted(argv[0] for argv in wired)
    for argv, func in wired.items():
        assert parser.parse_args(list(argv)).func is func, argv
    assert parser.parse_args(["routing"]).routing_only is True
    assert parser.parse_args(["replicas"]).routing_only is False
    assert parser.parse_args(["gateway", "--concurrency", "1..8"]).concurrency == [1, 2, 4, 8]
    assert parser.parse_args(["gateway"]).concurrency == [1, 16, 64, 256, 512]


@pytest.mark.parametrize("argv", [["--help"], ["gateway", "--help"]])
def test_help_runs_as_a_module(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage: python -m bench" in done.stdout


def test_profile_defaults(tmp_path: Path) -> None:
    # env/cpu.env: the engine on 127.0.0.1:8000, max-model-len 2048, one chip
    assert _profile_defaults("cpu") == {
        "url": "http://127.0.0.1:8000", "max_model_len": 2048, "chips": 1,
    }  # fmt: skip
    # env/v6e4-gemma4-26b.env: TP 4 -> 4 chips billed
    assert _profile_defaults("v6e4-gemma4-26b")["chips"] == 4
    # a broken profile must not stop a run against an explicit URL
    broken = tmp_path / "broken.env"
    broken.write_text("ENGINE_PORT=not-a-port\nENGINE_MAX_MODEL_LEN=4096\n")
    assert _profile_defaults(str(broken)) == {
        "url": "http://127.0.0.1:8000", "max_model_len": None, "chips": 1,
    }  # fmt: skip


def test_api_key_file_flag_then_environment(tmp_path: Path, monkeypatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    ns = argparse.Namespace
    assert _api_key(ns(api_key_file=str(key_file), api_key="flag")) == "from-file"
    assert _api_key(ns(api_key_file=None, api_key="flag")) == "flag"
    assert _api_key(ns(api_key_file=None, api_key=None)) == "from-env"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert _api_key(ns(api_key_file=None, api_key=None)) is None


def sweep(synthetic: str, out: Path) -> int:
    return main(["sweep", "--url", synthetic, "--model", "synthetic", "--context", "32,64",
                 "--concurrency", "1,2", "--output-len", "4", "--requests", "4", "--warmup", "0",
                 "--no-plots", "--out", str(out)])  # fmt: skip


def test_sweep_then_compare(synthetic: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    assert sweep(synthetic, a) == 0
    doc = json.loads((a / "cells.json").read_text())
    cells = {(c["context"], c["concurrency"]): c for c in doc["cells"]}
    assert set(cells) == {(32, 1), (32, 2), (64, 1), (64, 2)}
    for (ctx, _), c in cells.items():
        assert c["status"] == "ok" and c["completed"] == 4 and c["output_tokens"] == 16
        assert c["input_tokens"] == 4 * ctx  # prompts built to the exact server-side count

    # B: the same cells with half the throughput -> a regression in every cell
    b = tmp_path / "b"
    b.mkdir()
    for c in doc["cells"]:
        c["output_throughput"] /= 2
    (b / "cells.json").write_text(json.dumps(doc))
    assert main(["compare", str(a), str(a), "--fail-on-regression"]) == 0
    assert main(["compare", str(a), str(b)]) == 0  # reported, not failed, without the flag
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == 1
