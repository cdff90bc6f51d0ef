"""The command line: plan printing, and the exit code when the engine never comes up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.process import REPO, free_port


def warmup(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warmup", *args], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, **env}, timeout=60)  # fmt: skip


def test_plan_flag_prints_the_derived_plan_and_sends_nothing() -> None:
    """v6e4-gemma4-26b, worked by hand from env/v6e4-gemma4-26b.env and the warm-up defaults:

    - max-num-batched-tokens 4096, padding gap 0: token buckets 16, 32, ... 4096 (doubling);
    - prompt limit 16384 - 1024 (gen buffer) = 15360; long prompts double from 2 x 4096 = 8192
      while below it, then the limit itself: 8192, 15360;
    - max-num-seqs 256: request buckets 8, 16, ... 256;
    - images allowed, no vision_warmup_config: the default 896x896 tile;
    - tool choice and reasoning parsers on; logprobs 5 (default): logprobs plus prompt_logprobs
      on min(15360, 2048) = 2048 tokens; no system prompt: no prefix step.
    """
    done = warmup("--profile", "v6e4-gemma4-26b", "--plan", "--no-notify")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["token_buckets"] == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert printed["request_buckets"] == [8, 16, 32, 64, 128, 256]
    assert printed["long_prompts"] == [8192, 15360]
    assert printed["prompt_limit"] == 15360 and printed["max_num_batched_tokens"] == 4096
    assert printed["image_shapes"] == [[896, 896]]
    assert [s["name"] for s in printed["steps"]] == [
        "chat", "chat_stream", "tools", "reasoning",
        "prompt_16", "prompt_32", "prompt_64", "prompt_128", "prompt_256", "prompt_512",
        "prompt_1024", "prompt_2048", "prompt_4096",
        "long_8192", "long_15360",
        "concurrency_8", "concurrency_16", "concurrency_32", "concurrency_64",
        "concurrency_128", "concurrency_256",
        "image_896x896",
        "logprobs", "prompt_logprobs_2048",
    ]  # fmt: skip
    by_name = {s["name"]: s for s in printed["steps"]}
    assert by_name["long_15360"]["prompt_tokens"] == 15360
    assert by_name["concurrency_256"]["concurrency"] == 256
    assert by_name["prompt_logprobs_2048"]["prompt_tokens"] == 2048
    assert by_name["logprobs"]["logprobs"] == 5


def test_unknown_profile_exits_2() -> None:
    done = warmup("--profile", "no-such-profile", "--plan")
    assert done.returncode == 2 and "profile not found" in done.stderr


def test_an_engine_that_never_answers_exits_2_after_the_ready_timeout(tmp_path: Path) -> None:
    done = warmup(
        "--profile", "cpu", "--no-notify", "--report", str(tmp_path / "r.json"),
        WARMUP_ENGINE_URL=f"http://127.0.0.1:{free_port()}",
        VLLM_ENGINE_READY_TIMEOUT_S="2",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "not ready after 2 s (connection refused)" in done.stderr
