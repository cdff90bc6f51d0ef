"""Rendering: every profile renders, and vLLM's own `vllm serve` parser accepts the argv."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.render import render
from env.settings import ENV_DIR, CacheSettings, EngineEnv, EngineSettings

PROFILES = sorted(ENV_DIR.glob("*.env"))


def rendered(profile: Path):
    return render(
        EngineSettings.load(profile), EngineEnv.load(profile), CacheSettings.load(profile)
    )


def vllm_parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``serve ...`` with the parser `vllm serve` builds, plus its post-parse validation."""
    from vllm.entrypoints.cli import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    subparsers = parser.add_subparsers(dest="subparser")
    (cmd,) = serve.cmd_init()
    cmd.subparser_init(subparsers)
    args = parser.parse_args(argv)
    cmd.validate(args)
    return args


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_vllm_parser_accepts_rendered_argv(profile: Path) -> None:
    r = rendered(profile)
    assert r.argv[1] == "serve"
    args = vllm_parse(r.argv[1:])
    engine = EngineSettings.load(profile)
    assert args.model_tag == engine.model
    assert args.max_model_len == engine.max_model_len
    assert args.max_num_seqs == engine.max_num_seqs
    assert args.tensor_parallel_size == engine.tensor_parallel_size
    assert args.served_model_name == [engine.served_model_name]
    assert args.host == "127.0.0.1"


def test_vllm_parser_rejects_a_bad_flag() -> None:
    """The check above can fail: an unknown flag is refused by the same parser."""
    with pytest.raises(SystemExit):
        vllm_parse(["serve", "m", "--max-model-lenn", "5"])


def test_tpu_26b_flags_match_facts() -> None:
    r = rendered(ENV_DIR / "v6e4-gemma4-26b.env")
    a = vllm_parse(r.argv[1:])
    assert a.kv_cache_dtype == "fp8"
    # Google's GKE reference for Gemma 4 26B on v6e (accelerated-platforms): 0.95 on the JAX path.
    assert a.gpu_memory_utilization == pytest.approx(0.95)
    # tpu-inference CI (BLOCK_SIZE=256) and #2333: every upstream Gemma 4 TPU command sets it.
    assert a.block_size == 256
    assert a.max_num_batched_tokens == 4096
    assert a.disable_chunked_mm_input is True
    assert a.async_scheduling is False
    assert (
        a.enable_auto_tool_choice
        and a.tool_call_parser == "gemma4"
        and a.reasoning_parser == "gemma4"
    )
    spec = (
        a.speculative_config
        if isinstance(a.speculative_config, dict)
        else json.loads(a.speculative_config)
    )
    assert spec["method"] == "ngram" and spec["num_speculative_tokens"] == 3
    mm = (
        a.limit_mm_per_prompt
        if isinstance(a.limit_mm_per_prompt, dict)
        else json.loads(a.limit_mm_per_prompt)
    )
    assert mm.get("audio", 0) == 0 and mm.get("video", 0) == 0 and mm["image"] > 0
    assert r.env["VLLM_ENGINE_READY_TIMEOUT_S"] == "2400"  # PR #3408: cold start ~30 min
    assert r.env["VLLM_XLA_CACHE_PATH"] == r.env["JAX_COMPILATION_CACHE_DIR"]
    assert r.env["USE_BATCHED_RPA_KERNEL"] == "1" and r.env["MODEL_IMPL_TYPE"] == "flax_nnx"


TPU_PROFILES = sorted(ENV_DIR.glob("v6e*.env"))
# --gpu-memory-utilization per model path (entrypoint/capacity.py PROGRAM_HEADROOM_GIB): 0.95 on
# the JAX path (Google's GKE reference for Gemma 4 on v6e, accelerated-platforms; it leaves the
# 1.56 GiB per chip the JAX programs fit in, tpu-inference PR #3408); on the torchax path the most
# that leaves the ~9.5 GiB upstream's passing run freed for its programs (same PR): 0.65.
UTILIZATION = {"flax_nnx": 0.95, "vllm": 0.65}


def test_every_tpu_profile_is_covered() -> None:
    names = {p.stem for p in TPU_PROFILES}
    assert {"v6e4-gemma4-26b", "v6e4-gemma4-31b", "v6e8-gemma4-31b", "v6e4-gemma4-12b-x2"} <= names


@pytest.mark.parametrize("profile", TPU_PROFILES, ids=lambda p: p.stem)
def test_every_tpu_profile_sets_upstreams_block_size_and_utilization(profile: Path) -> None:
    """What vLLM's own parser reads from the rendered command of EVERY TPU profile:
    --block-size 256 (tpu-inference CI BLOCK_SIZE=256 and #2333; the automatic choice would be 16
    at 16K context, tpu-inference flash_attn.py) and the utilization of the profile's model path,
    never above what leaves its compiled programs their headroom."""
    from entrypoint import capacity

    r = rendered(profile)
    a = vllm_parse(r.argv[1:])
    assert a.block_size == 256
    impl = r.env["MODEL_IMPL_TYPE"]
    assert a.gpu_memory_utilization == pytest.approx(UTILIZATION[impl])
    assert a.gpu_memory_utilization <= capacity.max_utilization(impl)


def test_batch_profile_has_no_speculation() -> None:
    a = vllm_parse(rendered(ENV_DIR / "v6e4-gemma4-26b-batch.env").argv[1:])
    assert a.max_num_seqs == 512
    assert a.speculative_config is None


def test_31b_ready_timeout() -> None:
    assert rendered(ENV_DIR / "v6e8-gemma4-31b.env").env["VLLM_ENGINE_READY_TIMEOUT_S"] == "3600"


def test_hf_token_is_a_path_not_a_value(tmp_path: Path) -> None:
    token = tmp_path / "hf_token"
    token.write_text("hf_supersecret\n")
    engine = EngineSettings(platform="tpu", hf_token_file=token)
    r = render(engine, EngineEnv(), CacheSettings())
    assert r.env["HF_TOKEN_PATH"] == str(token)
    assert "hf_supersecret" not in r.shell()
    assert "hf_supersecret" not in " ".join(r.argv)


def test_secret_values_are_masked() -> None:
    r = render(EngineSettings(), EngineEnv(), CacheSettings())
    r.env["HF_TOKEN"] = "hf_abc"
    assert "hf_abc" not in r.shell()
    assert r.masked_env()["HF_TOKEN"] == "***"


def test_render_cli_prints_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "entrypoint", "render", "--profile", "v6e4-gemma4-26b"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "vllm \\\n    serve" in out
    assert "--no-async-scheduling" in out
    assert "VLLM_XLA_CACHE_PATH=" in out


def test_kv_events_render_per_replica() -> None:
    """ENGINE_KV_EVENTS=on: vLLM's parser takes the config; each replica publishes on its own
    ports (bound on loopback for a loopback engine), where the gateway looks for them."""
    from env.kvevents import subscriber_endpoints

    profile = ENV_DIR / "cpu.env"
    engine = EngineSettings.load(profile).model_copy(update={"kv_events": "on", "replicas": 2})
    args = vllm_parse(
        render(engine, EngineEnv.load(profile), CacheSettings.load(profile), replica=1).argv[1:]
    )
    cfg = args.kv_events_config
    assert cfg.enable_kv_cache_events and cfg.publisher == "zmq"
    assert (cfg.endpoint, cfg.replay_endpoint, cfg.topic) == (
        "tcp://[::ffff:127.0.0.1]:9001", "tcp://127.0.0.1:10001", "kv-events.replica-1"
    )  # fmt: skip
    assert subscriber_endpoints(engine.replica_urls[1], 1000) == (
        "tcp://127.0.0.1:9001", "tcp://127.0.0.1:10001"
    )  # fmt: skip
    wild = engine.model_copy(update={"host": "0.0.0.0"})
    argv = render(wild, EngineEnv.load(profile), CacheSettings.load(profile)).argv
    assert json.loads(argv[argv.index("--kv-events-config") + 1])["endpoint"] == "tcp://*:9000"
    assert "--kv-events-config" not in rendered(profile).argv  # off by default
