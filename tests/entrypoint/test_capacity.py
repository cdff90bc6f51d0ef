"""entrypoint.capacity: the KV-cache estimate behind the preflight's max-num-seqs warning.

Every expected value is worked out by hand in the test from the geometry it names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entrypoint.capacity import (
    KNOWN,
    KVGeometry,
    geometry,
    geometry_from_config,
    kv_bytes_per_element,
    max_full_context_seqs,
)
from env.settings import ENV_DIR, EngineEnv, EngineSettings


def test_bytes_per_sequence_of_gemma_4_26b_at_16k_in_fp8() -> None:
    """25 sliding layers x min(16384, 1024) x 8 heads x 256 x 2 (K and V) = 104,857,600;
    5 full layers x 16384 x 2 heads x 512 x 1 (K = V) = 83,886,080; x 1 byte (fp8)."""
    g = KNOWN["gemma-4-26b"]
    assert g.bytes_per_sequence(16384, 1.0) == 104_857_600 + 83_886_080
    # below the window the sliding layers grow with the context too: 25 x 512 x 8 x 256 x 2
    # + 5 x 512 x 2 x 512, in bf16 (2 bytes)
    assert g.bytes_per_sequence(512, 2.0) == (52_428_800 + 2_621_440) * 2


def test_k_eq_v_halves_the_full_layers() -> None:
    shared = KVGeometry(0, 1, 1, 1, 1, 1, 1, True, 0.0)
    separate = KVGeometry(0, 1, 1, 1, 1, 1, 1, False, 0.0)
    assert shared.bytes_per_sequence(100, 1.0) == 100
    assert separate.bytes_per_sequence(100, 1.0) == 200


def test_the_v6e4_26b_profile_fits_343_full_context_sequences() -> None:
    """HBM 4 chips x 32e9 x 0.90 utilisation = 115.2e9, minus bf16 weights 2 x 25.2e9 = 50.4e9:
    64.8e9 bytes of KV; / 188,743,680 per 16384-token sequence (above) = 343.3 -> 343."""
    profile = ENV_DIR / "v6e4-gemma4-26b.env"
    engine, runtime = EngineSettings.load(profile), EngineEnv.load(profile)
    assert kv_bytes_per_element(engine) == 1.0  # ENGINE_KV_CACHE_DTYPE=fp8
    assert max_full_context_seqs(engine, runtime) == 343


def write_config(root: Path) -> Path:
    """A transformers-5 style Gemma 4 config: 3 sliding + 1 full layer, per-layer head size."""
    root.mkdir(parents=True, exist_ok=True)
    text = {
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
        "num_key_value_heads": 2,
        "head_dim": 64,
        "per_layer_config": {"3": {"head_dim": 128}},
        "sliding_window": 512,
    }
    (root / "config.json").write_text(json.dumps({"text_config": text}))
    return root


def test_geometry_from_a_local_config(tmp_path: Path) -> None:
    assert geometry_from_config(write_config(tmp_path / "m")) == KVGeometry(
        sliding_layers=3, full_layers=1, kv_heads_sliding=2, kv_heads_full=2,
        head_dim_sliding=64, head_dim_full=128, window=512, k_eq_v=False, params=0.0,
    )  # fmt: skip
    assert geometry_from_config(tmp_path / "missing") is None


def test_a_cpu_profile_counts_its_kv_space(tmp_path: Path) -> None:
    """1 GiB of CPU KV space, bf16, 2048 tokens: (3 x 512 x 2 x 64 x 2 + 1 x 2048 x 2 x 128
    x 2) x 2 bytes = 2,883,584 per sequence; 1,073,741,824 / 2,883,584 = 372.4 -> 372."""
    model = write_config(tmp_path / "tiny")
    engine = EngineSettings(platform="cpu", model=str(model), max_model_len=2048)
    assert max_full_context_seqs(engine, EngineEnv(vllm_cpu_kvcache_space=1)) == 372
    assert max_full_context_seqs(engine, EngineEnv()) is None  # no KV space set: unknown


@pytest.mark.parametrize(
    ("model", "platform", "expected"),
    [
        ("google/gemma-4-31B-it", "tpu", "gemma-4-31b"),
        ("google/gemma-4-E4B-it", "tpu", "gemma-4-e4b"),
        ("meta-llama/Llama-3-8B", "tpu", None),
    ],
)
def test_known_models_by_name(model: str, platform: str, expected: str | None) -> None:
    engine = EngineSettings(platform=platform, model=model)
    assert geometry(engine) == (KNOWN[expected] if expected else None)


def test_unknown_memory_gives_no_estimate() -> None:
    gpu = EngineSettings(platform="gpu", model="google/gemma-4-26B-A4B-it")
    assert max_full_context_seqs(gpu, EngineEnv()) is None  # GPU memory varies by card
    other = EngineSettings(platform="tpu", model="meta-llama/Llama-3-8B")
    assert max_full_context_seqs(other, EngineEnv()) is None  # geometry unknown
