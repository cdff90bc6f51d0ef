"""The plan generator: buckets and steps derived from each profile (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from env.settings import ENV_DIR, EngineEnv, EngineSettings, WarmupSettings
from warmup.plan import (
    DEFAULT_IMAGE_SHAPE,
    Plan,
    build_plan,
    effective_batched_tokens,
    request_buckets,
    token_buckets,
)

PROFILES = sorted(ENV_DIR.glob("*.env"))


def plan_for(profile: str | Path, **warmup: object) -> Plan:
    return build_plan(
        EngineSettings.load(profile), EngineEnv.load(profile), WarmupSettings(**warmup)
    )


def plan_of(
    engine: dict[str, object], env: dict[str, object] | None = None, **warmup: object
) -> Plan:
    return build_plan(EngineSettings(**engine), EngineEnv(**(env or {})), WarmupSettings(**warmup))


# -- the ladders (mirror tpu_inference/runner/utils.py) ----------------------------------------


def test_token_buckets_double_up_to_the_first_covering_power() -> None:
    assert token_buckets(4096) == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert token_buckets(3000) == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert token_buckets(16) == [16]


def test_token_buckets_with_padding_gap_step_linearly_after_the_gap() -> None:
    assert token_buckets(4096, padding_gap=512) == [
        16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 2560, 3072, 3584, 4096,
    ]  # fmt: skip
    assert token_buckets(1000, padding_gap=256) == [16, 32, 64, 128, 256, 512, 768, 1024]


def test_request_buckets_are_powers_of_two_from_8_capped_at_max_num_seqs() -> None:
    assert request_buckets(256) == [8, 16, 32, 64, 128, 256]
    assert request_buckets(100) == [8, 16, 32, 64, 100]
    assert request_buckets(192) == [8, 16, 32, 64, 128, 192]
    assert request_buckets(8) == [8]
    assert request_buckets(4) == [4]


def test_unset_batched_tokens_follow_vllm_platform_defaults() -> None:
    assert effective_batched_tokens(EngineSettings(platform="cpu")) == 2048
    assert effective_batched_tokens(EngineSettings(platform="cpu", tensor_parallel_size=2)) == 4096
    assert effective_batched_tokens(EngineSettings(platform="tpu")) == 1024
    assert (
        effective_batched_tokens(EngineSettings(platform="tpu", max_num_batched_tokens=4096))
        == 4096
    )


# -- per profile ------------------------------------------------------------------------------


def test_cpu_profile_plan() -> None:
    plan = plan_for(ENV_DIR / "cpu.env")
    assert plan.token_buckets == [16, 32, 64, 128, 256, 512, 1024, 2048]
    assert plan.request_buckets == [8, 16, 32, 64]
    assert plan.prompt_limit == 2048 - 256
    # the 2048 bucket is above the prompt limit: the long prompt at exactly the limit replaces it
    assert plan.long_prompts == [1792]
    assert plan.image_shapes == []
    assert plan.names == [
        "chat", "chat_stream", "tools", "reasoning",
        "prompt_16", "prompt_32", "prompt_64", "prompt_128", "prompt_256", "prompt_512",
        "prompt_1024", "long_1792",
        "concurrency_8", "concurrency_16", "concurrency_32", "concurrency_64",
        "logprobs", "prompt_logprobs_1792",
    ]  # fmt: skip


def test_v6e4_26b_profile_plan() -> None:
    profile = ENV_DIR / "v6e4-gemma4-26b.env"
    plan = plan_for(profile)
    limit = EngineSettings.load(profile).prompt_limit
    assert plan.max_num_batched_tokens == 4096
    assert plan.token_buckets == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert plan.request_buckets == [8, 16, 32, 64, 128, 256]
    assert plan.long_prompts == [8192, limit]
    assert plan.image_shapes == [DEFAULT_IMAGE_SHAPE]
    assert plan.names == [
        "chat", "chat_stream", "tools", "reasoning",
        *(f"prompt_{n}" for n in plan.token_buckets),
        "long_8192", f"long_{limit}",
        *(f"concurrency_{n}" for n in plan.request_buckets),
        "image_896x896", "logprobs", "prompt_logprobs_2048",
    ]  # fmt: skip


def test_batch_profile_climbs_to_512_requests() -> None:
    plan = plan_for(ENV_DIR / "v6e4-gemma4-26b-batch.env")
    assert plan.request_buckets == [8, 16, 32, 64, 128, 256, 512]
    assert plan.names[-4:] == [
        "concurrency_512",
        "image_896x896",
        "logprobs",
        "prompt_logprobs_2048",
    ]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_profile_derives_a_consistent_plan(profile: Path) -> None:
    """Rules that hold for any profile, printed so `pytest -s` shows each derived plan."""
    engine = EngineSettings.load(profile)
    plan = plan_for(profile)
    print(f"\n{profile.stem}: {plan.summary()}")
    batched = effective_batched_tokens(engine)
    assert plan.token_buckets[-1] >= batched > plan.token_buckets[-2], "first covering bucket"
    assert plan.request_buckets[-1] == engine.max_num_seqs
    assert plan.long_prompts[-1] == engine.prompt_limit, "the exact boundary is always tried"
    prompts = [s.prompt_tokens for s in plan.steps if s.kind == "prompt"]
    assert prompts == sorted(prompts) and max(prompts) == engine.prompt_limit
    assert all(n <= engine.prompt_limit for n in prompts)
    assert len(plan.names) == len(set(plan.names)), "step names are unique (they name failures)"
    assert ("tools" in plan.names) == engine.enable_auto_tool_choice
    assert ("reasoning" in plan.names) == bool(engine.reasoning_parser)
    has_images = (engine.limit_mm_per_prompt or {}).get("image", 0) > 0
    assert any(s.kind == "image" for s in plan.steps) == has_images
    assert plan.names[:2] == ["chat", "chat_stream"], "cheap end-to-end proof first"


# -- switches -----------------------------------------------------------------------------------


def test_parsers_off_drop_their_steps() -> None:
    plan = plan_of({"enable_auto_tool_choice": False, "reasoning_parser": None})
    assert "tools" not in plan.names and "reasoning" not in plan.names


def test_padding_gap_from_the_engine_env_changes_the_prompt_steps() -> None:
    plan = plan_of({"platform": "tpu", "max_num_batched_tokens": 2048, "max_model_len": 8192},
                   {"vllm_tpu_bucket_padding_gap": 512})  # fmt: skip
    assert plan.token_buckets == [16, 32, 64, 128, 256, 512, 1024, 1536, 2048]
    assert [s.name for s in plan.steps if s.name.startswith("prompt_1")] == [
        "prompt_16", "prompt_128", "prompt_1024", "prompt_1536",
    ]  # fmt: skip


def test_image_shapes_from_vision_warmup_config_or_explicit_setting() -> None:
    engine = {
        "limit_mm_per_prompt": {"image": 2},
        "additional_config": {"vision_warmup_config": {"image_shapes": [[448, 448], [768, 1024]]}},
    }
    assert plan_of(engine).image_shapes == [(448, 448), (768, 1024)]
    assert [s.name for s in plan_of(engine).steps if s.kind == "image"] == [
        "image_448x448", "image_768x1024",
    ]  # fmt: skip
    assert plan_of(engine, image_shapes=[(224, 224)]).image_shapes == [(224, 224)]
    no_images = {**engine, "limit_mm_per_prompt": {"image": 0, "audio": 1}}
    assert plan_of(no_images).image_shapes == []


def test_image_shapes_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMUP_IMAGE_SHAPES", "[[512, 640]]")
    assert WarmupSettings().image_shapes == [(512, 640)]


def test_logprobs_zero_skips_both_logprob_steps() -> None:
    names = plan_of({}, logprobs=0).names
    assert not any("logprobs" in n for n in names)


def test_system_prompt_adds_a_prefix_step_that_is_never_a_stall() -> None:
    plan = plan_of({}, system_prompt="You are a helpful assistant.")
    assert plan.steps[-1].name == "prefix"
    assert plan.steps[-1].stall_check is False
    assert "prefix" not in plan_of({}).names


def test_explicit_max_prompt_tokens_sets_the_long_prompt_boundary() -> None:
    plan = plan_of(
        {"max_model_len": 4096, "max_prompt_tokens": 3000, "max_num_batched_tokens": 1024}
    )
    assert plan.prompt_limit == 3000
    assert plan.long_prompts == [2048, 3000]
    assert "prompt_logprobs_2048" in plan.names
