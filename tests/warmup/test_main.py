"""The command line: plan printing, and the exit code when the engine never comes up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from env.settings import ENV_DIR, EngineEnv, EngineSettings, WarmupSettings
from tests.support.process import REPO, free_port
from warmup.plan import build_plan


def warmup(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warmup", *args], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, **env}, timeout=60)  # fmt: skip


def test_plan_flag_prints_the_derived_plan_and_sends_nothing() -> None:
    profile = ENV_DIR / "v6e4-gemma4-26b.env"
    done = warmup("--profile", "v6e4-gemma4-26b", "--plan")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    plan = build_plan(EngineSettings.load(profile), EngineEnv.load(profile), WarmupSettings())
    assert [s["name"] for s in printed["steps"]] == plan.names
    assert printed["token_buckets"] == plan.token_buckets


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
