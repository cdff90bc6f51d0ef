"""``python -m bench vllm-check``: our client and ``vllm bench serve`` on the same cell.

Run against the synthetic upstream (no engine): both tools really run, side by side, with the
tiny Gemma 4's tokenizer for vLLM's random dataset.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.vllm_check import COMPARED, cmd_vllm_check, model_root
from env.settings import CacheSettings
from tests.support.engine import PROFILE
from tests.support.process import REPO, free_port
from tests.warmup.fakes import serve


@contextmanager
def models_server(root: str | None) -> Iterator[str]:
    def app(method: str, path: str, body: object) -> tuple[int, object]:
        if path == "/v1/models":
            return 200, {"data": [{"id": "m", "root": root}]}
        return 404, {}

    with serve(app) as url:
        yield url


def test_model_root_is_the_served_models_local_dir(tmp_path: Path) -> None:
    with models_server(str(tmp_path)) as url:
        assert model_root(url) == str(tmp_path)
    with models_server("google/gemma-4-26B-A4B-it") as url:  # a hub id, not a local dir
        assert model_root(url) is None
    assert model_root(f"http://127.0.0.1:{free_port()}") is None  # nobody there


def test_without_a_tokenizer_dir_it_stops_with_2(capsys) -> None:
    with models_server(None) as url:
        args = argparse.Namespace(url=url, model="m", tokenizer=None)
        assert cmd_vllm_check(args) == 2
    assert "no tokenizer dir: pass --tokenizer" in capsys.readouterr().out


def test_both_tools_measure_the_same_cell(synthetic: str, tiny_model: None) -> None:
    tokenizer = CacheSettings.load(PROFILE).tiny_model_dir
    tokenizer = tokenizer if tokenizer.is_absolute() else REPO / tokenizer
    done = subprocess.run(
        [sys.executable, "-m", "bench", "vllm-check", "--url", synthetic, "--model", "synthetic",
         "--tokenizer", str(tokenizer), "--input-len", "16", "--output-len", "4",
         "--concurrency", "2", "--requests", "4", "--warmup", "1", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = " ".join(done.stdout.split())  # rich wraps the title
    # our prompt = vLLM's 16 input tokens + the chat template as the server counts it (8 here)
    assert "prompt 24 tokens (16 + 8 template)" in out
    for label, _, _ in COMPARED:
        assert label in out, label
    assert "TTFT/TPOT/output tok/s: largest gap" in out
