"""entrypoint.capacity: the KV-cache estimate behind the preflight's max-num-seqs warning.

Every expected value is worked out by hand in the test from the geometry it names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from entrypoint.capacity import (
    KNOWN,
    KVGeometry,
    geometry,
    geometry_from_config,
    kv_bytes_per_element,
    layout,
    max_full_context_seqs,
    seed_comparison,
)
from env.settings import ENV_DIR, EngineEnv, EngineSettings
from tests.support.engine import PROFILE, Engine


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


def test_the_v6e4_26b_profile_fits_377_full_context_sequences() -> None:
    """HBM 4 chips x 32e9 x 0.95 utilisation = 121.6e9, minus bf16 weights 2 x 25.2e9 = 50.4e9:
    71.2e9 bytes of KV; / 188,743,680 per 16384-token sequence (above) = 377.2 -> 377."""
    profile = ENV_DIR / "v6e4-gemma4-26b.env"
    engine, runtime = EngineSettings.load(profile), EngineEnv.load(profile)
    assert kv_bytes_per_element(engine) == 1.0  # ENGINE_KV_CACHE_DTYPE=fp8
    assert max_full_context_seqs(engine, runtime) == 377


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


# --- the vLLM-mirroring layout model -------------------------------------------------------------


def test_tiny_cpu_layout_worked_by_hand() -> None:
    """The cpu profile: 1 sliding layer (2 heads x 32) and 1 full layer (2 heads x 64), bf16,
    block 128, 1 GiB. Pages: 128 x 2 x 32 x 2 x 2 = 32 KiB and 128 x 2 x 64 x 2 x 2 = 64 KiB;
    unified to 64 KiB (sliding block 256). Groups of 1 layer: 1 GiB / 64 KiB = 16,384 blocks.
    Per 2048-token request: full 2048/128 = 16, sliding min(127 + 2048, 2048) / 256 + 1 = 9:
    25 blocks. 16,384 / 25 = 655.36x; x 2048 = 1,342,177 tokens."""
    profile = ENV_DIR / "cpu.env"
    lay = layout(EngineSettings.load(profile), EngineEnv.load(profile))
    assert lay is not None
    assert (lay.page_bytes, lay.num_blocks, lay.blocks_per_request) == (65536, 16384, 25)
    assert lay.max_concurrency == pytest.approx(655.36)
    assert lay.kv_cache_tokens == 1_342_177


def test_hybrid_groups_of_gemma_4_26b() -> None:
    """25 sliding + 5 full layers: group size 5 (25 >= 1.5 x 5), so 5 sliding groups + 1 full.
    TP 4: sliding heads 8/4 = 2, the 2 full heads -> max(1, 0) = 1 replicated. fp8, block 16:
    pages 16 x 2 x 256 x 2 = 16 KiB (sliding) and 16 x 1 x 512 x 2 = 16 KiB (full). 5 layers
    per group: 80 KiB per block. Sliding blocks per request: cdiv(min(1023 + 4096, 16384), 16)
    + 1 = 321; full: 16384 / 16 = 1024; 5 x 321 + 1024 = 2,629."""
    profile = ENV_DIR / "v6e4-gemma4-26b.env"
    auto_block = EngineSettings.load(profile).model_copy(update={"block_size": None})
    lay = layout(auto_block, EngineEnv.load(profile), memory_gib=100.0)
    assert lay is not None
    assert [(g.kind, g.groups, g.layers_per_group) for g in lay.groups] == [
        ("sliding", 5, 5),
        ("full", 1, 5),
    ]
    assert (lay.bytes_per_block, lay.blocks_per_request) == (81920, 2629)
    assert lay.num_blocks == int(100 * 1024**3 / 4 // 81920)


def test_seed_layout_is_reproduced_only_by_bf16_without_sliding_savings() -> None:
    """The seed's 12B v6e-4 at 65,536: 88.98 GiB, 242,944 tokens. bf16, every layer at full
    context: 48 layers x 2 heads/chip x 256|512... = 96 KiB per token per chip; 22.245 GiB /
    (16-token blocks of 1.5 MiB) = 15,185 blocks -> 242,960 tokens (+0.01%)."""
    rows = {(r["kv_cache_dtype"], r["hybrid_allocator"]): r for r in seed_comparison()}
    assert rows[("bf16", False)]["kv_cache_tokens"] == 242_960
    assert rows[("bf16", False)]["max_concurrency"] == pytest.approx(3.71, abs=0.005)
    assert all(abs(r["vs_seed_tokens_pct"]) > 50 for k, r in rows.items() if k != ("bf16", False))


def test_capacity_cli_prints_the_model_and_the_seed_readings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from entrypoint.__main__ import main

    assert main(["capacity", "--profile", "cpu"]) == 0
    assert "KV cache size 1,342,177 tokens, maximum concurrency 655.36x" in capsys.readouterr().out
    assert main(["capacity", "--profile", "v6e4-gemma4-26b", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["seed_12b_v6e4_reported"]["kv_cache_tokens"] == 242_944
    assert len(doc["seed_12b_v6e4_model"]) == 4
    assert main(["capacity", "--profile", "gpu-gemma4-26b"]) == 0
    assert "pass --memory-gib" in capsys.readouterr().out


KV_LINE = re.compile(
    r"KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x"
)


@pytest.mark.engine
def test_model_matches_what_the_real_engine_logs(engine: Engine) -> None:
    """The session's CPU engine, started by the production entrypoint, which keeps vLLM's output
    in <CACHE_HOT_DIR>/engine.log: its KV line must match the model within 5%."""
    log = Path(engine.env["CACHE_HOT_DIR"]) / "engine.log"
    found = KV_LINE.findall(log.read_text())
    assert found, f"no KV cache line in {log}"
    tokens, max_len, conc = found[-1]
    lay = layout(engine.settings, EngineEnv.load(PROFILE))
    assert lay is not None and lay.max_model_len == int(max_len.replace(",", ""))
    assert lay.kv_cache_tokens == pytest.approx(int(tokens.replace(",", "")), rel=0.05)
    assert lay.max_concurrency == pytest.approx(float(conc), rel=0.05)


def test_a_layout_that_cannot_fit_one_chip_is_refused_in_one_line(tmp_path) -> None:
    """Gemma 4 12B on the torchax path needs the ~9.5 GiB of free HBM upstream's passing run had
    for its compiled programs (tpu-inference PR #3408: ~4.7 GiB failed, ~9.5 GiB passed), so at
    most 0.65 on a v6e chip; the old 0.80 (6.25 GiB) is refused in one line. On one chip the
    22.17 GiB of weights do not fit under that at all; at TP=2 (v6e4-gemma4-12b-x2) they do."""
    from entrypoint import capacity, preflight

    x2 = ENV_DIR / "v6e4-gemma4-12b-x2.env"
    bad = tmp_path / "v6e4-bad.env"
    bad.write_text(
        x2.read_text().replace(
            "ENGINE_GPU_MEMORY_UTILIZATION=0.65", "ENGINE_GPU_MEMORY_UTILIZATION=0.80"
        )
    )
    lines = [str(f) for f in preflight.run(bad) if f.key == "ENGINE_GPU_MEMORY_UTILIZATION"]
    assert lines == [
        "ERROR ENGINE_GPU_MEMORY_UTILIZATION: compiled programs need ~9.5 GiB per chip outside "
        "vLLM's share on the vllm path, but utilization 0.8 leaves 6.25 GiB of 31.25: use at "
        "most 0.65"
    ]
    assert capacity.max_utilization("vllm") == 0.65
    b = capacity.chip_budget(EngineSettings.load(x2), EngineEnv.load(x2))
    assert b is not None and b.problem is None and b.chips == 2
    assert b.weights_gib + b.reserved_gib + b.kv_gib == pytest.approx(b.hbm_gib)
    # real margin: a quarter over the proven headroom is still free, and a 12B request at 16K
    # fits many times over in the KV share
    assert b.reserved_gib - b.program_headroom_gib > 1.0
    assert b.kv_gib > 10 * b.one_request_gib
    one = ENV_DIR / "v6e1-gemma4-12b.env"
    single = capacity.chip_budget(EngineSettings.load(one), EngineEnv.load(one))
    assert single is not None and single.problem is not None
    assert "exceed a 31.25 GiB v6e chip at any utilization" in single.problem
    from entrypoint.__main__ import chip_budgets

    # Every shipped TPU profile fits except the one kept to record the refusal.
    assert [x.profile for x in chip_budgets() if x.problem] == ["v6e1-gemma4-12b"]
    assert {x.profile for x in chip_budgets()} >= {"v6e4-gemma4-31b", "v6e4-gemma4-12b-x2"}


def test_the_readme_budget_table_is_what_capacity_all_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """env/README.md's per-chip table is `python -m entrypoint capacity --all`'s output, line for
    line, so a changed profile or constant cannot leave stale figures in the docs."""
    from entrypoint.__main__ import main

    assert main(["capacity", "--all"]) == 1  # v6e1-gemma4-12b is refused, on purpose
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(printed) == 2 + len(list(ENV_DIR.glob("v6e*.env")))
    readme = (ENV_DIR / "README.md").read_text()
    section = readme[readme.index("### Per-chip HBM budget") :]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    documented = [line for line in section.splitlines() if line.startswith("| profile | chips")]
    assert len(documented) == 1, "exactly one budget table in that section"
    lines = section.splitlines()
    first = lines.index(documented[0])
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert table == printed
