"""Preflight: catch the known TPU/CPU pitfalls before a 30-minute cold compile finds them.

Every rule runs, and every problem is reported at once, one line each, so an operator fixes the
profile in one pass. Errors stop ``serve``; warnings are printed and the engine starts.
The rules encode FACTS.md section 1 (TPU) and section 3 (CPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from entrypoint import capacity
from env.settings import CacheSettings, EngineEnv, EngineSettings, unknown_keys, validation_problems

CPU_HEAD_SIZES = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512})
MM_CHUNK_MIN_BATCHED_TOKENS = 2496
TPU_MAX_MEMORY_UTILIZATION = 0.95


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper()} {self.key}: {self.message}"


@dataclass(frozen=True)
class Context:
    engine: EngineSettings
    runtime: EngineEnv
    cache: CacheSettings
    chip_dir: Path = Path("/dev")  # where TPU chips appear (/dev/accel*, /dev/vfio/<n>)


Rule = Callable[[Context], Iterator[Finding]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def _error(key: str, message: str) -> Finding:
    return Finding("error", key, message)


def _warning(key: str, message: str) -> Finding:
    return Finding("warning", key, message)


@rule
def generation_buffer(ctx: Context) -> Iterator[Finding]:
    """The exact boundary trap: a prompt at the advertised maximum must leave room to generate."""
    e = ctx.engine
    room = e.max_model_len - e.prompt_limit
    if room < e.gen_buffer_tokens:
        yield _error(
            "ENGINE_MAX_PROMPT_TOKENS",
            f"a {e.prompt_limit}-token prompt leaves {room} tokens to generate within "
            f"ENGINE_MAX_MODEL_LEN={e.max_model_len}, below ENGINE_GEN_BUFFER_TOKENS="
            f"{e.gen_buffer_tokens}: raise max-model-len or lower the maximum prompt",
        )


@rule
def tpu_modalities(ctx: Context) -> Iterator[Finding]:
    if ctx.engine.platform != "tpu":
        return
    for modality in ("audio", "video"):
        if (ctx.engine.limit_mm_per_prompt or {}).get(modality, 0) > 0:
            yield _error(
                "ENGINE_LIMIT_MM_PER_PROMPT",
                f'{modality} is not supported for Gemma 4 on TPU; set "{modality}": 0',
            )


@rule
def tpu_ngram_needs_sync_scheduling(ctx: Context) -> Iterator[Finding]:
    spec = ctx.engine.speculative_config or {}
    if (
        ctx.engine.platform == "tpu"
        and spec.get("method") == "ngram"
        and ctx.engine.async_scheduling is not False
    ):
        yield _error(
            "ENGINE_ASYNC_SCHEDULING",
            "ngram speculative decoding on TPU asserts without --no-async-scheduling; set "
            "ENGINE_ASYNC_SCHEDULING=false",
        )


@rule
def tpu_chunked_mm_input(ctx: Context) -> Iterator[Finding]:
    e = ctx.engine
    if e.platform != "tpu":
        return
    if e.multimodal and not e.disable_chunked_mm_input:
        yield _error(
            "ENGINE_DISABLE_CHUNKED_MM_INPUT",
            "multimodal on TPU requires --disable-chunked-mm-input; set ENGINE_DISABLE_CHUNKED_MM_INPUT=true",
        )
    if e.disable_chunked_mm_input and (e.max_num_batched_tokens or 0) < MM_CHUNK_MIN_BATCHED_TOKENS:
        yield _error(
            "ENGINE_MAX_NUM_BATCHED_TOKENS",
            f"--disable-chunked-mm-input needs max-num-batched-tokens >= {MM_CHUNK_MIN_BATCHED_TOKENS} "
            f"(got {e.max_num_batched_tokens}); start-up fails otherwise",
        )


@rule
def tpu_memory_utilization(ctx: Context) -> Iterator[Finding]:
    util = ctx.engine.gpu_memory_utilization
    if ctx.engine.platform == "tpu" and util is not None and util > TPU_MAX_MEMORY_UTILIZATION:
        yield _error(
            "ENGINE_GPU_MEMORY_UTILIZATION",
            f"{util} leaves no HBM headroom on TPU (0.98 OOMs); use at most {TPU_MAX_MEMORY_UTILIZATION}, 0.90 is tested",
        )


def visible_tpu_chips(chip_dir: Path) -> int | None:
    """Chips this host exposes: TPU_VISIBLE_CHIPS, else /dev/accel* or /dev/vfio/<n>; None if unknown."""
    env = os.environ.get("TPU_VISIBLE_CHIPS", "").strip()
    if env:
        return len([c for c in env.split(",") if c.strip()])
    accel = list(chip_dir.glob("accel[0-9]*"))
    if accel:
        return len(accel)
    vfio = [p for p in (chip_dir / "vfio").glob("[0-9]*")] if (chip_dir / "vfio").is_dir() else []
    return len(vfio) or None


@rule
def tpu_tensor_parallel(ctx: Context) -> Iterator[Finding]:
    if ctx.engine.platform != "tpu":
        return
    chips = visible_tpu_chips(ctx.chip_dir)
    tp = ctx.engine.tensor_parallel_size
    if chips is not None and chips != tp:
        yield _error(
            "ENGINE_TENSOR_PARALLEL_SIZE",
            f"tensor-parallel size {tp} does not match the {chips} TPU chips visible on this host",
        )


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


@rule
def cache_dirs(ctx: Context) -> Iterator[Finding]:
    """Cache dirs must exist and be writable. On CPU (local dev) missing dirs are created by
    ``serve``; elsewhere a missing dir usually means a volume that was not mounted."""
    dirs = {"CACHE_HOT_DIR": ctx.cache.hot_dir, "CACHE_HF_DIR": ctx.cache.hf_dir}
    if ctx.cache.persist_dir is not None:
        dirs["CACHE_PERSIST_DIR"] = ctx.cache.persist_dir
    for key, path in dirs.items():
        if path.exists():
            if not _writable_dir(path):
                yield _error(key, f"{path} is not a writable directory")
        elif ctx.engine.platform != "cpu":
            yield _error(key, f"{path} does not exist (is the volume mounted?)")
        else:
            parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
            if not os.access(parent, os.W_OK):
                yield _error(key, f"{path} does not exist and {parent} is not writable")


@rule
def hf_token_file(ctx: Context) -> Iterator[Finding]:
    path = ctx.engine.hf_token_file
    if path is None:
        return
    if not path.is_file():
        yield _error(
            "ENGINE_HF_TOKEN_FILE", f"{path} does not exist (put the Hugging Face token in it)"
        )
    elif not os.access(path, os.R_OK):
        yield _error("ENGINE_HF_TOKEN_FILE", f"{path} is not readable")
    elif path.stat().st_size == 0:
        yield _error("ENGINE_HF_TOKEN_FILE", f"{path} is empty")


@rule
def cpu_block_size(ctx: Context) -> Iterator[Finding]:
    bs = ctx.engine.block_size
    if ctx.engine.platform == "cpu" and bs is not None and bs % 32:
        yield _error(
            "ENGINE_BLOCK_SIZE", f"{bs} is not a multiple of 32; the CPU backend fails to start"
        )


@rule
def cpu_head_sizes(ctx: Context) -> Iterator[Finding]:
    if ctx.engine.platform != "cpu":
        return
    geo = capacity.geometry(ctx.engine)
    if geo is None:
        return
    for name, size in (("head_dim", geo.head_dim_sliding), ("global_head_dim", geo.head_dim_full)):
        if size not in CPU_HEAD_SIZES:
            yield _error(
                "ENGINE_MODEL",
                f"{name}={size}: the CPU attention kernel supports {sorted(CPU_HEAD_SIZES)} only "
                "(the server starts, then dies on the first request)",
            )


@rule
def tpu_forced_block_size(ctx: Context) -> Iterator[Finding]:
    if ctx.engine.platform == "tpu" and ctx.engine.block_size == 32:
        yield _warning(
            "ENGINE_BLOCK_SIZE",
            "32 is not a Trillium requirement; leave it unset (auto: 16 above 8192 tokens) or use the "
            "Gemma 4 recipes' 64/256",
        )


@rule
def batched_tokens_power_of_two(ctx: Context) -> Iterator[Finding]:
    n = ctx.engine.max_num_batched_tokens
    if n is not None and n & (n - 1):
        yield _warning(
            "ENGINE_MAX_NUM_BATCHED_TOKENS",
            f"{n} is not a power of two; TPU token buckets double up to it, so the last bucket pads",
        )


@rule
def seqs_fit_kv_cache(ctx: Context) -> Iterator[Finding]:
    fit = capacity.max_full_context_seqs(ctx.engine, ctx.runtime)
    if fit is not None and ctx.engine.max_num_seqs > fit:
        yield _warning(
            "ENGINE_MAX_NUM_SEQS",
            f"{ctx.engine.max_num_seqs} sequences, but the KV cache holds about {fit} at "
            f"max-model-len {ctx.engine.max_model_len}; expect preemptions at long context",
        )


def run(profile: str | os.PathLike[str] | None, chip_dir: Path = Path("/dev")) -> list[Finding]:
    """All findings for a profile: key typos and type errors first, then every rule."""
    findings = [_error(k, "unknown key (typo?)") for k in unknown_keys(profile)]
    findings += [
        _error(line.split(":", 1)[0], line.split(":", 1)[1].strip())
        for line in validation_problems(profile)
    ]
    if findings:
        return findings  # the rules below need a profile that parses
    ctx = Context(
        EngineSettings.load(profile), EngineEnv.load(profile), CacheSettings.load(profile), chip_dir
    )
    for check in RULES:
        findings.extend(check(ctx))
    return findings


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]
