"""Compile cache: keyed by stack identity, seeded from the persistent copy, written back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from entrypoint.cache import CacheLayout, cache_key, save, seed
from env.settings import CacheSettings, EngineSettings


def test_key_changes_with_image_version_model_and_tp() -> None:
    base = EngineSettings(
        platform="tpu",
        image="vllm/vllm-tpu:v0.32.0",
        model="google/gemma-4-26B-A4B-it",
        tensor_parallel_size=4,
    )
    k = cache_key(base, "0.32.0")
    assert k.startswith("gemma-4-26B-A4B-it-tp4-")
    assert cache_key(base, "0.32.0") == k  # deterministic
    assert cache_key(base, "0.33.0") != k
    assert cache_key(base.model_copy(update={"image": "vllm/vllm-tpu:v0.33.0"}), "0.32.0") != k
    assert cache_key(base.model_copy(update={"tensor_parallel_size": 8}), "0.32.0") != k
    assert cache_key(base.model_copy(update={"model": "google/gemma-4-31B-it"}), "0.32.0") != k


def test_seed_then_save_round_trip(tmp_path: Path) -> None:
    cache = CacheSettings(
        hot_dir=tmp_path / "hot", persist_dir=tmp_path / "persist", hf_dir=tmp_path / "hf"
    )
    layout = CacheLayout.for_settings(EngineSettings(), cache, version="1")
    assert "cold start" in seed(layout)
    (layout.hot / "xla").mkdir(parents=True)
    (layout.hot / "xla" / "artifact").write_bytes(b"compiled")
    assert "saved" in save(layout)
    assert (layout.persist / "xla" / "artifact").read_bytes() == b"compiled"

    # A fresh host: empty tmpfs, persistent copy present -> seeded.
    fresh = CacheLayout.for_settings(
        EngineSettings(), cache.model_copy(update={"hot_dir": tmp_path / "hot2"}), version="1"
    )
    assert "seeded" in seed(fresh)
    assert (fresh.hot / "xla" / "artifact").read_bytes() == b"compiled"
    # A populated hot dir is never overwritten by an older persistent copy.
    (fresh.hot / "xla" / "artifact").write_bytes(b"newer")
    assert "already populated" in seed(fresh)
    assert (fresh.hot / "xla" / "artifact").read_bytes() == b"newer"


def test_other_key_starts_cold(tmp_path: Path) -> None:
    cache = CacheSettings(hot_dir=tmp_path / "hot", persist_dir=tmp_path / "persist")
    old = CacheLayout.for_settings(EngineSettings(), cache, version="1")
    old.hot.mkdir(parents=True)
    (old.hot / "a").write_text("x")
    save(old)
    new = CacheLayout.for_settings(EngineSettings(), cache, version="2")
    assert "cold start" in seed(new)
    assert list(new.hot.iterdir()) == []


def test_save_with_empty_hot_dir_keeps_persistent_copy(tmp_path: Path) -> None:
    cache = CacheSettings(hot_dir=tmp_path / "hot", persist_dir=tmp_path / "persist")
    layout = CacheLayout.for_settings(EngineSettings(), cache, version="1")
    layout.persist.mkdir(parents=True)
    (layout.persist / "keep").write_text("x")
    layout.hot.mkdir(parents=True)
    assert "nothing saved" in save(layout)
    assert (layout.persist / "keep").exists()


def test_cache_save_cli(tmp_path: Path) -> None:
    env = {
        "CACHE_HOT_DIR": str(tmp_path / "hot"),
        "CACHE_PERSIST_DIR": str(tmp_path / "persist"),
        "PATH": "/usr/bin:/bin",
    }
    r = subprocess.run(
        [sys.executable, "-m", "entrypoint", "cache", "save", "--profile", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "nothing saved" in r.stdout


def test_save_uses_the_key_the_engine_seeded(tmp_path: Path) -> None:
    """The warm-up image has no vLLM, so its computed key differs from the engine's."""
    cache = CacheSettings(hot_dir=tmp_path / "hot", persist_dir=tmp_path / "persist")
    engine_side = CacheLayout.for_settings(EngineSettings(), cache, version="0.32.0+cpu")
    seed(engine_side)
    (engine_side.hot / "artifact").write_text("x")

    warmup_side = CacheLayout.active(EngineSettings(), cache)
    assert warmup_side.key == engine_side.key
    assert "saved" in save(warmup_side)
    assert (engine_side.persist / "artifact").read_text() == "x"


def test_active_without_a_seed_is_the_computed_layout(tmp_path: Path) -> None:
    cache = CacheSettings(hot_dir=tmp_path / "hot", persist_dir=tmp_path / "persist")
    assert CacheLayout.active(EngineSettings(), cache) == CacheLayout.for_settings(
        EngineSettings(), cache
    )
