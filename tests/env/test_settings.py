"""The settings model: profiles load, env overrides files, every key documented exactly once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from env.settings import (
    ENV_DIR,
    SLICES,
    EngineEnv,
    EngineSettings,
    known_keys,
    profile_path,
    unknown_keys,
    validation_problems,
)

PROFILES = sorted(ENV_DIR.glob("*.env"))
README = (ENV_DIR / "README.md").read_text()


def documented_keys() -> list[str]:
    """First-column keys of every table row in env/README.md."""
    return re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", README, flags=re.MULTILINE)


def test_profiles_exist() -> None:
    names = {p.stem for p in PROFILES}
    assert {
        "cpu",
        "v6e4-gemma4-26b",
        "v6e4-gemma4-26b-batch",
        "v6e1-gemma4-e4b",
        "v6e8-gemma4-31b",
        "gpu-gemma4-26b",
    } <= names


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_profile_parses_cleanly(profile: Path) -> None:
    assert unknown_keys(profile) == []
    assert validation_problems(profile) == []
    engine = EngineSettings.load(profile)
    assert engine.host == "127.0.0.1", "the engine binds loopback; the gateway is the public door"
    assert engine.port == 8000


def test_every_key_documented_exactly_once() -> None:
    documented = documented_keys()
    dupes = sorted({k for k in documented if documented.count(k) > 1})
    assert dupes == [], f"documented twice: {dupes}"
    code_keys = {k for cls in SLICES for k in cls.env_keys()}
    assert sorted(code_keys - set(documented)) == [], (
        "keys in settings.py missing from env/README.md"
    )
    assert sorted(set(documented) - code_keys) == [], "keys in env/README.md that settings.py lacks"


def test_environment_overrides_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_PORT", "8123")
    assert EngineSettings.load("cpu").port == 8123


def test_unknown_key_is_reported(tmp_path: Path) -> None:
    profile = tmp_path / "x.env"
    profile.write_text("ENGINE_PLATFORM=cpu\nENGINE_MAX_MODEL_LENN=4096\n")
    assert unknown_keys(profile) == ["ENGINE_MAX_MODEL_LENN"]
    assert "ENGINE_MAX_MODEL_LENN" not in known_keys()


def test_type_errors_are_lines_not_exceptions(tmp_path: Path) -> None:
    profile = tmp_path / "x.env"
    profile.write_text("ENGINE_MAX_MODEL_LEN=lots\nENGINE_PLATFORM=fpga\n")
    problems = validation_problems(profile)
    assert any(p.startswith("ENGINE_MAX_MODEL_LEN:") for p in problems)
    assert any(p.startswith("ENGINE_PLATFORM:") for p in problems)


def test_profile_path_resolution() -> None:
    assert profile_path("cpu") == ENV_DIR / "cpu.env"
    assert profile_path("v6e4-gemma4-26b.env") == ENV_DIR / "v6e4-gemma4-26b.env"
    assert profile_path(str(ENV_DIR / "cpu.env")) == ENV_DIR / "cpu.env"


def test_runtime_env_booleans_render_as_digits() -> None:
    env = EngineEnv(use_batched_rpa_kernel=True, skip_jax_precompile=False).as_environ()
    assert env["USE_BATCHED_RPA_KERNEL"] == "1"
    assert env["SKIP_JAX_PRECOMPILE"] == "0"
    assert "VLLM_TPU_BUCKET_PADDING_GAP" not in env  # unset stays unset
