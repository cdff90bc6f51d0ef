"""Preflight: catch the known TPU/CPU pitfalls before a 30-minute cold compile finds them.

Every rule runs, and every problem is reported at once, one line each, so an operator fixes the
profile in one pass. Errors stop ``serve``; warnings are printed and the engine starts.

The TPU rules follow tpu-inference (vLLM 0.32): ngram speculation asserts without
``--no-async-scheduling`` (``speculative_decoding_manager.py``); ``--disable-chunked-mm-input``
is required for multimodal and needs ``--max-num-batched-tokens >= 2496`` (``tpu_platform.py``);
Gemma 4 has no audio/video path on TPU (``models/jax/gemma4_mm.py``); 0.98 HBM utilization OOMs
and 0.90 is what upstream runs (``tpu_worker.py``); block size is automatic, 16 above 8192
tokens (``layers/vllm/backends/flash_attn.py``), so a forced 32 is no Trillium requirement;
token buckets double up to max-num-batched-tokens (``tpu_inference/runner/utils.py``). The CPU
rules follow vLLM's CPU backend as run here: the attention kernel supports head sizes 32, 64, 80,
96, 112, 128, 160, 192, 224, 256 and 512 only (head_dim 16 starts, then dies on the first
request) and the block size must be a multiple of 32 (``--block-size 16`` fails to start).

Replicas (``ENGINE_REPLICAS``, entrypoint/replica.py): the chips they need must exist on the host
(``replicas x chips each``; the host's chips are the ones it exposes, else the count the profile's
name declares: ``v6e4-...`` is a v6e-4, 4 chips), no chip may be given to two replicas (only one
process can open a TPU chip), each replica's TP size is its chip count, their ports
(``ENGINE_PORT + i``) must not collide with the gateway's, the warm-up's or the ops server's, nor
with the replicas' libtpu mesh-controller ports (8476 + i); and the upstream list the gateway will
use must be servable (env/replicas.py: a malformed URL, a duplicate, no replica at all).

Two points of view (``where``):

``container`` (``serve``, and ``check`` by default): the engine's own, inside the container or
    as a local process: cache dirs and the token file are checked at the paths the profile names.
``host`` (``make check``, ``check --host``): the TPU/GPU host before ``make up``. There the cache
    dirs (``/cache/...``) are container paths backed by compose volumes (docker-compose.yml), so
    they are not looked for; instead the files compose mounts as secrets must exist on the host:
    ``ENGINE_HF_TOKEN_FILE`` (default ``secrets/hf_token``) and ``GATEWAY_API_KEYS_FILE``
    (default ``secrets/api_keys``), relative paths taken from the compose project directory (the
    repository root), as ``docker-compose.tpu.yml`` / ``docker-compose.gpu.yml`` name them. The
    CPU profile runs as local processes too (``make dev``), so on the host it is checked as-is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from entrypoint import capacity, replica
from entrypoint.process import STOP_GRACE_S
from env.replicas import upstream_problems
from env.settings import (
    CacheSettings,
    EngineEnv,
    EngineSettings,
    GatewaySettings,
    OpsSettings,
    WarmupSettings,
    profile_path,
    unknown_keys,
    validation_problems,
)

CPU_HEAD_SIZES = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512})
MM_CHUNK_MIN_BATCHED_TOKENS = 2496
TPU_MAX_MEMORY_UTILIZATION = 0.95
# The compose project directory: relative secret paths in docker-compose.<platform>.yml resolve here.
PROJECT_DIR = Path(__file__).resolve().parents[1]
# The files docker-compose.<tpu|gpu>.yml mounts as secrets, and their defaults there.
COMPOSE_SECRET_DEFAULTS = {
    "ENGINE_HF_TOKEN_FILE": Path("secrets/hf_token"),
    "GATEWAY_API_KEYS_FILE": Path("secrets/api_keys"),
}
Where = Literal["container", "host"]
# docker-compose.yml's engine stop_grace_period: Docker SIGKILLs the container this long after
# its SIGTERM, whatever the launcher is still waiting for.
COMPOSE_ENGINE_STOP_GRACE_S = 130


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
    where: Where = "container"
    gateway: GatewaySettings | None = None
    project_dir: Path = PROJECT_DIR
    profile: Path | None = None  # the profile file (its name may declare the TPU host: v6e4-...)
    warmup: WarmupSettings | None = None
    ops: OpsSettings | None = None

    @property
    def compose_only(self) -> bool:
        """Host view of a platform that runs only under compose (its paths are container paths)."""
        return self.where == "host" and self.engine.platform != "cpu"


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


_DECLARED_HOST = re.compile(r"^(v\d+[a-z]*)(\d+)-")


def declared_tpu_chips(profile: Path | None) -> tuple[str, int] | None:
    """The TPU host a profile's name declares: ``v6e4-gemma4-12b-x2`` -> ``("v6e-4", 4)``."""
    match = _DECLARED_HOST.match(profile.name) if profile is not None else None
    if match is None:
        return None
    return f"{match.group(1)}-{match.group(2)}", int(match.group(2))


def host_tpu_chips(ctx: Context) -> tuple[int, str] | None:
    """The host's chip count and where it comes from: the chips it exposes, else the profile's
    name (so the layout is checked on any machine, `make check` included)."""
    seen = visible_tpu_chips(ctx.chip_dir)
    if seen is not None:
        return seen, "visible on this host"
    declared = declared_tpu_chips(ctx.profile)
    if declared is not None:
        return declared[1], f"of a {declared[0]} (the profile's name)"
    return None


@rule
def tpu_tensor_parallel(ctx: Context) -> Iterator[Finding]:
    e = ctx.engine
    tp = e.tensor_parallel_size
    if e.chips_per_replica is not None and e.chips_per_replica != tp:
        yield _error(
            "ENGINE_CHIPS_PER_REPLICA",
            f"{e.chips_per_replica} chips per replica, but tensor-parallel size {tp}: each "
            "replica shards the model over exactly its own chips",
        )
    if e.platform != "tpu" or replica.pinned(e):
        return  # several replicas: replica_chips checks the layout
    host = host_tpu_chips(ctx)
    if host is not None and host[0] != tp:
        yield _error(
            "ENGINE_TENSOR_PARALLEL_SIZE",
            f"tensor-parallel size {tp} does not match the {host[0]} TPU chips {host[1]}",
        )


@rule
def replica_chips(ctx: Context) -> Iterator[Finding]:
    """Several replicas on one TPU host: enough chips, none shared, a known chip grid."""
    e = ctx.engine
    if not replica.pinned(e):
        return
    for line in replica.chip_set_problems(e):
        yield _error("ENGINE_CHIP_SETS", line.split(": ", 1)[1])
    if e.chips_each not in replica.CHIP_BOUNDS:
        yield _error(
            "ENGINE_CHIPS_PER_REPLICA",
            f"{e.chips_each} chips per replica: libtpu's per-process chip grid is known here for "
            f"{sorted(replica.CHIP_BOUNDS)} only",
        )
    host = host_tpu_chips(ctx)
    if host is None:
        return
    chips, where = host
    need = e.replicas * e.chips_each
    if need > chips:
        yield _error(
            "ENGINE_REPLICAS",
            f"{e.replicas} replicas x {e.chips_each} chip(s) = {need} chips, but there are "
            f"{chips} TPU chips {where}",
        )
    if e.chip_sets.strip() and not replica.chip_set_problems(e):
        beyond = sorted({c for s in replica.chip_sets(e) for c in s if c >= chips})
        if beyond:
            yield _error(
                "ENGINE_CHIP_SETS",
                f"chip(s) {beyond} do not exist: there are {chips} TPU chips {where} "
                f"(0..{chips - 1})",
            )


@rule
def replica_ports(ctx: Context) -> Iterator[Finding]:
    """Replica ports (ENGINE_PORT + i) against each other's mesh ports and the stack's other
    listeners (one host network under compose)."""
    e = ctx.engine
    last = e.replica_port(e.replicas - 1)
    if last > 65535:
        yield _error(
            "ENGINE_REPLICAS",
            f"{e.replicas} replicas from ENGINE_PORT={e.port} need ports up to {last} (> 65535)",
        )
        return
    ports = {e.replica_port(i): i for i in range(e.replicas)}
    gateway = ctx.gateway or GatewaySettings()
    others = {"GATEWAY_PORT": gateway.port}
    if ctx.warmup is not None and ctx.warmup.status_port:
        others["WARMUP_STATUS_PORT"] = ctx.warmup.status_port
    if ctx.ops is not None:
        others["OPS_PORT"] = ctx.ops.port
    if replica.pinned(e):
        for i in range(e.replicas):
            others[f"the libtpu TPU_PROCESS_PORT of replica {i}"] = replica.process_port(i)
    for what, port in others.items():
        if port in ports:
            key = "ENGINE_PORT" if e.replicas == 1 else "ENGINE_REPLICAS"
            yield _error(
                key,
                f"replica {ports[port]} listens on port {port}, which is also {what}: "
                "move ENGINE_PORT (replica i listens on ENGINE_PORT + i)",
            )


@rule
def upstreams(ctx: Context) -> Iterator[Finding]:
    """The replica list the gateway and the warm-up will use (env/replicas.py), one line each."""
    for line in upstream_problems(ctx.engine, ctx.gateway or GatewaySettings()):
        key, _, message = line.partition(": ")
        yield _error(key, message)


@rule
def shutdown_within_compose_grace(ctx: Context) -> Iterator[Finding]:
    bound = ctx.engine.shutdown_timeout_s + STOP_GRACE_S
    if bound > COMPOSE_ENGINE_STOP_GRACE_S:
        yield _warning(
            "ENGINE_SHUTDOWN_TIMEOUT_S",
            f"the launcher waits {bound:.0f} s for the drain, but under compose Docker kills the "
            f"engine container {COMPOSE_ENGINE_STOP_GRACE_S} s after its SIGTERM "
            "(docker-compose.yml stop_grace_period)",
        )


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


@rule
def cache_dirs(ctx: Context) -> Iterator[Finding]:
    """Cache dirs must exist and be writable. On CPU (local dev) missing dirs are created by
    ``serve``; elsewhere a missing dir usually means a volume that was not mounted. Seen from a
    TPU/GPU host they are compose volumes' mount points, not host paths: not checked there."""
    if ctx.compose_only:
        return
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
    if ctx.compose_only:
        return  # compose_secrets checks it where compose reads it
    if ctx.engine.hf_token_file is not None:
        yield from _secret_file(
            "ENGINE_HF_TOKEN_FILE", ctx.engine.hf_token_file, "the Hugging Face token"
        )


@rule
def compose_secrets(ctx: Context) -> Iterator[Finding]:
    """Host view: every file docker-compose.<tpu|gpu>.yml mounts as a secret (compose refuses to
    start without it; the TPU gateway refuses to start without API keys)."""
    if not ctx.compose_only:
        return
    gateway = ctx.gateway or GatewaySettings()
    configured = {
        "ENGINE_HF_TOKEN_FILE": ctx.engine.hf_token_file,
        "GATEWAY_API_KEYS_FILE": gateway.api_keys_file,
    }
    what = {"ENGINE_HF_TOKEN_FILE": "the Hugging Face token", "GATEWAY_API_KEYS_FILE": "API keys"}
    for key, default in COMPOSE_SECRET_DEFAULTS.items():
        path = configured[key] or default
        yield from _secret_file(
            key, path if path.is_absolute() else ctx.project_dir / path, what[key]
        )


def _secret_file(key: str, path: Path, what: str) -> Iterator[Finding]:
    if not path.is_file():
        yield _error(key, f"{path} does not exist (put {what} in it)")
    elif not os.access(path, os.R_OK):
        yield _error(key, f"{path} is not readable")
    elif path.stat().st_size == 0:
        yield _error(key, f"{path} is empty")


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
def tpu_chip_budget(ctx: Context) -> Iterator[Finding]:
    """Weights, compiled-program headroom and one full-length request's KV must fit one chip
    (entrypoint/capacity.py ``chip_budget``; PR #3408 for the program sizes)."""
    budget = capacity.chip_budget(ctx.engine, ctx.runtime)
    if budget is not None and budget.problem is not None:
        yield _error("ENGINE_GPU_MEMORY_UTILIZATION", budget.problem)


@rule
def ready_timeout_covers_cold_start(ctx: Context) -> Iterator[Finding]:
    """vLLM's ready timeout must outlast a cold start (download + compile of every shape), or a
    new pod is killed before it ever serves and restarts forever (PR #3408: 2400 s)."""
    need = capacity.cold_start_s(ctx.engine)
    have = ctx.runtime.vllm_engine_ready_timeout_s
    if need is not None and have < need:
        yield _error(
            "VLLM_ENGINE_READY_TIMEOUT_S",
            f"{have} s is shorter than a cold start of {ctx.engine.model} (~{need} s: weights "
            f"at {capacity.DOWNLOAD_BYTES_PER_S / 1e6:.0f} MB/s + compiling every shape); "
            f"use at least {need}",
        )


@rule
def tpu_block_size_set(ctx: Context) -> Iterator[Finding]:
    """Every upstream Gemma 4 TPU command sets --block-size (256: tpu-inference CI and #2333;
    64: Google's KV-events recipe); the automatic choice is 16 above 8192 tokens."""
    if ctx.engine.platform == "tpu" and ctx.engine.block_size is None:
        yield _warning(
            "ENGINE_BLOCK_SIZE",
            "unset: the automatic block size is 16 above 8192 tokens of context; the upstream "
            "Gemma 4 TPU recipes set 256 (or 64)",
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


def run(
    profile: str | os.PathLike[str] | None,
    chip_dir: Path = Path("/dev"),
    where: Where = "container",
    project_dir: Path = PROJECT_DIR,
) -> list[Finding]:
    """All findings for a profile: key typos and type errors first, then every rule.

    ``where``: ``container`` (the engine's view) or ``host`` (a TPU/GPU host before ``make up``).
    """
    findings = [_error(k, "unknown key (typo?)") for k in unknown_keys(profile)]
    findings += [
        _error(line.split(":", 1)[0], line.split(":", 1)[1].strip())
        for line in validation_problems(profile)
    ]
    if findings:
        return findings  # the rules below need a profile that parses
    ctx = Context(
        EngineSettings.load(profile),
        EngineEnv.load(profile),
        CacheSettings.load(profile),
        chip_dir,
        where=where,
        gateway=GatewaySettings.load(profile),
        project_dir=project_dir,
        profile=profile_path(profile),
        warmup=WarmupSettings.load(profile),
        ops=OpsSettings.load(profile),
    )
    for check in RULES:
        findings.extend(check(ctx))
    return findings


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]
