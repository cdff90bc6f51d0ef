"""KV-cache capacity model: how many tokens and full-context sequences fit in the KV cache.

Used by the preflight's warning (max-num-seqs above what the KV cache holds at full context),
by ``python -m entrypoint capacity`` and by the ops server's memory layout, which prints it next
to what the engine logged at start. ``layout`` mirrors vLLM 0.32's own KV-cache sizing
(``vllm/v1/core/kv_cache_utils.py``), step by step, so that its figures are vLLM's:

1. every attention layer's page = block_size x KV heads on this worker (``max(1, heads // TP)``,
   vLLM's ``gemma4.py``) x head size x 2 (K and V: vLLM stores both even for the k_eq_v full
   layers, whose K weights it loads into both slots) x bytes per element;
2. pages are unified to the largest (``unify_kv_cache_spec_page_size``: a smaller page grows its
   block size by the ratio);
3. layers are grouped by type into groups of equal size (``_get_kv_cache_groups_uniform_page_size``:
   the size is the smallest type's layer count, or the largest when under 1.5x the smallest);
4. ``num_blocks = available bytes // max over groups of (the group's pages)``;
5. a request at max-model-len needs, per group, ``cdiv(max-model-len, block)`` blocks (full
   attention) or ``cdiv(min(window - 1 + max-num-batched-tokens, max-model-len), block) + 1``
   (sliding window: ``SlidingWindowSpec.max_admission_blocks_per_request``);
6. maximum concurrency = ``num_blocks / sum of those blocks``; KV cache size in tokens =
   ``int(concurrency x max-model-len)`` (``get_kv_cache_capacity``): the two figures vLLM logs as
   ``<device> KV cache size: N tokens, Maximum concurrency for L tokens per request: X.XXx``.

Available memory: on CPU exactly ``VLLM_CPU_KVCACHE_SPACE`` GiB; on TPU per chip
``HBM x --gpu-memory-utilization - bf16 weights / TP`` (an estimate: the engine's own "used"
figure also holds activations and compile scratch); on GPU unknown (pass ``--memory-gib``). Geometry from the published Gemma 4 model configs (``config.json``: ``layer_types``,
``num_key_value_heads``, ``head_dim``/``global_head_dim``, ``sliding_window``; transformers'
``Gemma4TextConfig``): Gemma 4 mixes sliding-window layers (KV bounded by the window) with
full-attention layers (KV grows with context); the full layers of 26B/31B/12B share K and V
(k_eq_v), halving their footprint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from env.settings import EngineEnv, EngineSettings

GIB = 1024**3
V6E_HBM_BYTES = 32 * 10**9  # per chip (Cloud TPU docs: 32 GB HBM per v6e chip)
# What the runtime reports per v6e chip: the seed blog's v6e-4 start-up log shows 124.98 GiB of
# HBM in total over 4 chips.
V6E_HBM_REPORTED_BYTES = 124.98 / 4 * GIB
# vLLM's default --max-num-batched-tokens for the OpenAI server on GPU/TPU (engine/arg_utils.py),
# used when a profile leaves it unset.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


@dataclass(frozen=True)
class KVGeometry:
    sliding_layers: int
    full_layers: int
    kv_heads_sliding: int
    kv_heads_full: int
    head_dim_sliding: int
    head_dim_full: int
    window: int
    k_eq_v: bool
    params: float  # total parameters, for the weight footprint

    def bytes_per_sequence(self, context: int, kv_bytes: float) -> float:
        sliding = (
            self.sliding_layers
            * min(context, self.window)
            * self.kv_heads_sliding
            * self.head_dim_sliding
            * 2
        )
        full = (
            self.full_layers
            * context
            * self.kv_heads_full
            * self.head_dim_full
            * (1 if self.k_eq_v else 2)
        )
        return (sliding + full) * kv_bytes


# Keyed by a substring of the model id (lower case).
KNOWN: dict[str, KVGeometry] = {
    "gemma-4-26b": KVGeometry(25, 5, 8, 2, 256, 512, 1024, True, 25.2e9),
    "gemma-4-31b": KVGeometry(50, 10, 16, 4, 256, 512, 1024, True, 30.7e9),
    "gemma-4-12b": KVGeometry(40, 8, 8, 1, 256, 512, 1024, True, 11.9e9),
    "gemma-4-e4b": KVGeometry(20, 4, 2, 2, 256, 512, 512, False, 8.0e9),
    "gemma-4-e2b": KVGeometry(12, 3, 1, 1, 256, 512, 512, False, 5.1e9),
}


def geometry_from_config(path: Path) -> KVGeometry | None:
    """Read a local ``config.json`` (the tiny CPU model, or any downloaded Gemma 4)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    types = cfg.get("layer_types") or []
    sliding = sum(1 for t in types if t == "sliding_attention")
    kv = cfg.get("num_key_value_heads", 1)
    head_dim = cfg.get("head_dim", 256)
    # transformers >= 5 stores the full layers' head size per layer: {"1": {"head_dim": 64}}.
    per_layer = cfg.get("per_layer_config") or {}
    full_idx = [str(i) for i, t in enumerate(types) if t != "sliding_attention"]
    full_head = next(
        (per_layer[i]["head_dim"] for i in full_idx if "head_dim" in per_layer.get(i, {})), None
    )
    return KVGeometry(
        sliding_layers=sliding,
        full_layers=len(types) - sliding,
        kv_heads_sliding=kv,
        kv_heads_full=cfg.get("num_global_key_value_heads") or kv,
        head_dim_sliding=head_dim,
        head_dim_full=cfg.get("global_head_dim") or full_head or head_dim,
        window=cfg.get("sliding_window", 1024),
        k_eq_v=bool(cfg.get("attention_k_eq_v", False)),
        params=0.0,  # unknown here; CPU KV space is set explicitly, weights are not subtracted
    )


def geometry(engine: EngineSettings) -> KVGeometry | None:
    local = Path(engine.model)
    if local.is_dir():
        return geometry_from_config(local)
    name = engine.model.lower()
    return next((g for key, g in KNOWN.items() if key in name), None)


def kv_bytes_per_element(engine: EngineSettings) -> float:
    return 1.0 if (engine.kv_cache_dtype or "auto").startswith("fp8") else 2.0


def kv_budget_bytes(engine: EngineSettings, runtime: EngineEnv, geo: KVGeometry) -> float | None:
    """Bytes available for KV cache, or None when the platform's memory cannot be known here."""
    if engine.platform == "cpu":
        return runtime.vllm_cpu_kvcache_space * GIB if runtime.vllm_cpu_kvcache_space else None
    if engine.platform == "tpu":
        util = engine.gpu_memory_utilization or 0.9
        weights = geo.params * 2  # bf16 weights
        return engine.tensor_parallel_size * V6E_HBM_BYTES * util - weights
    return None  # GPU memory varies by card


def max_full_context_seqs(engine: EngineSettings, runtime: EngineEnv) -> int | None:
    """How many sequences at max-model-len the KV cache can hold, if it can be estimated."""
    geo = geometry(engine)
    if geo is None:
        return None
    budget = kv_budget_bytes(engine, runtime, geo)
    if budget is None:
        return None
    per_seq = geo.bytes_per_sequence(engine.max_model_len, kv_bytes_per_element(engine))
    return max(0, int(budget // per_seq)) if per_seq else None


# --- vLLM's KV-cache sizing, mirrored (module docstring, steps 1-6) ---------------------------


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_size(engine: EngineSettings) -> int:
    """The block size vLLM uses: the profile's, else the platform default (CPU 128:
    ``platforms/cpu.py``; TPU auto: 16 above 8192 tokens of context, else next_pow2(len) / 16
    clamped to 16..256, tpu-inference ``flash_attn.py``; GPU 16)."""
    if engine.block_size:
        return engine.block_size
    if engine.platform == "cpu":
        return 128
    if engine.platform == "tpu":
        if engine.max_model_len > 8192:
            return 16
        pow2 = 1 << (engine.max_model_len - 1).bit_length()
        return max(16, min(256, pow2 // 16))
    return 16


@dataclass(frozen=True)
class GroupShape:
    kind: str  # "sliding" or "full"
    groups: int  # KV-cache groups of this kind
    layers_per_group: int  # the largest group's real layers
    block_size: int  # tokens per block after page unification
    blocks_per_request: int  # per group, for one request at max-model-len


@dataclass(frozen=True)
class Layout:
    """The model's figures for one engine configuration (per worker; TP workers are alike)."""

    max_model_len: int
    tensor_parallel_size: int
    kv_bytes_per_element: float
    page_bytes: int
    groups: tuple[GroupShape, ...]
    bytes_per_block: int
    available_bytes: float  # per worker
    memory_source: str
    num_blocks: int
    blocks_per_request: int
    max_concurrency: float
    kv_cache_tokens: int
    hybrid: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrency": round(self.max_concurrency, 2),
            "max_model_len": self.max_model_len,
            "num_blocks": self.num_blocks,
            "blocks_per_request": self.blocks_per_request,
            "bytes_per_block": self.bytes_per_block,
            "page_bytes": self.page_bytes,
            "available_gib_per_worker": round(self.available_bytes / GIB, 3),
            "tensor_parallel_size": self.tensor_parallel_size,
            "kv_bytes_per_element": self.kv_bytes_per_element,
            "hybrid_allocator": self.hybrid,
            "groups": [g.__dict__ for g in self.groups],
            "memory_source": self.memory_source,
        }


def available_bytes_per_worker(
    engine: EngineSettings, runtime: EngineEnv, geo: KVGeometry, memory_gib: float | None = None
) -> tuple[float, str] | None:
    """KV bytes each worker can use and where the figure comes from; None when unknowable."""
    tp = engine.tensor_parallel_size
    if memory_gib is not None:
        return memory_gib * GIB / tp, f"given: {memory_gib} GiB in total over {tp} worker(s)"
    if engine.platform == "cpu":
        if not runtime.vllm_cpu_kvcache_space:
            return None
        gib = runtime.vllm_cpu_kvcache_space
        return gib * GIB, f"VLLM_CPU_KVCACHE_SPACE={gib} GiB"
    if engine.platform == "tpu":
        util = engine.gpu_memory_utilization or 0.9
        weights = geo.params * 2 / tp
        return (
            V6E_HBM_REPORTED_BYTES * util - weights,
            f"v6e HBM {V6E_HBM_REPORTED_BYTES / GIB:.2f} GiB/chip x {util} utilization - bf16 "
            f"weights {weights / GIB:.2f} GiB/chip (estimate: activations not subtracted)",
        )
    return None


def layout(
    engine: EngineSettings,
    runtime: EngineEnv,
    memory_gib: float | None = None,
    geo: KVGeometry | None = None,
    hybrid: bool = True,
) -> Layout | None:
    """vLLM's KV cache size and maximum concurrency for this engine, or None if unknowable.

    ``hybrid=False`` models every layer holding the whole context (vLLM's
    ``--disable-hybrid-kv-cache-manager``, or a backend without sliding-window savings)."""
    geo = geo or geometry(engine)
    if geo is None:
        return None
    avail = available_bytes_per_worker(engine, runtime, geo, memory_gib)
    if avail is None:
        return None
    available, source = avail
    tp = engine.tensor_parallel_size
    kv_bytes = kv_bytes_per_element(engine)
    block = block_size(engine)
    max_len = engine.max_model_len
    batched = engine.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS

    # 1. pages per layer kind on one worker
    kinds = [
        ("sliding", geo.sliding_layers, geo.kv_heads_sliding, geo.head_dim_sliding),
        ("full", geo.full_layers, geo.kv_heads_full, geo.head_dim_full),
    ]
    kinds = [k for k in kinds if k[1] > 0]
    page = {
        kind: int(block * max(1, heads // tp) * dim * 2 * kv_bytes) for kind, _, heads, dim in kinds
    }
    counts = {kind: n for kind, n, _, _ in kinds}
    if not hybrid:  # one group of every layer, each holding the whole context
        bpb = sum(page[k] * counts[k] for k in counts)
        per_req = _cdiv(max_len, block)
        groups: tuple[GroupShape, ...] = (
            GroupShape("all", 1, sum(counts.values()), block, per_req),
        )
        page_bytes = max(page.values())
    else:
        # 2. unify pages: a smaller page grows its block size by the ratio
        page_bytes = max(page.values())
        blocks = {k: block * (page_bytes // p) for k, p in page.items()}
        # 3. equal-size groups per kind
        size = min(counts.values())
        if max(counts.values()) < 1.5 * size:
            size = max(counts.values())
        shapes = []
        for kind, n in counts.items():
            n_groups = _cdiv(n, size)
            b = blocks[kind]
            if kind == "full":
                need = _cdiv(max_len, b)
            else:  # 5. sliding window: the window plus the tokens in flight, +1 block
                need = _cdiv(min(geo.window - 1 + batched, max_len), b) + 1
            shapes.append(GroupShape(kind, n_groups, _cdiv(n, n_groups), b, need))
        groups = tuple(shapes)
        # 4. bytes per block: the largest group's pages
        bpb = page_bytes * max(g.layers_per_group for g in groups)
        per_req = sum(g.groups * g.blocks_per_request for g in groups)
    num_blocks = max(0, int(available // bpb))
    conc = num_blocks / per_req
    return Layout(
        max_model_len=max_len,
        tensor_parallel_size=tp,
        kv_bytes_per_element=kv_bytes,
        page_bytes=page_bytes,
        groups=groups,
        bytes_per_block=bpb,
        available_bytes=available,
        memory_source=source,
        num_blocks=num_blocks,
        blocks_per_request=per_req,
        max_concurrency=conc,
        kv_cache_tokens=int(conc * max_len),
        hybrid=hybrid,
    )


# The seed blog's reported layout (its devops agent's memory-layout answer): Gemma 4 12B on a
# v6e-4, max-model-len 65,536, "HBM available for KV cache & activations: 88.98 GiB",
# "242,944 tokens", "3.71x", KV said to be fp8_e5m2.
SEED_12B_V6E4 = {
    "model": "google/gemma-4-12B-it",
    "tensor_parallel_size": 4,
    "max_model_len": 65536,
    "max_num_batched_tokens": 4096,
    "available_gib": 88.98,
    "kv_cache_tokens": 242_944,
    "max_concurrency": 3.71,
}


def seed_comparison() -> list[dict[str, object]]:
    """The model's figures for the seed's 12B v6e-4 deployment, under the readings that matter:
    fp8 or bf16 KV, vLLM's hybrid allocator or every layer at full context. Same memory as the
    seed reported, so only the layout differs."""
    s = SEED_12B_V6E4
    out = []
    for dtype in ("fp8", None):
        for hybrid in (True, False):
            engine = EngineSettings(
                platform="tpu",
                model=str(s["model"]),
                tensor_parallel_size=int(s["tensor_parallel_size"]),  # type: ignore[call-overload]
                max_model_len=int(s["max_model_len"]),  # type: ignore[call-overload]
                max_num_batched_tokens=int(s["max_num_batched_tokens"]),  # type: ignore[call-overload]
                kv_cache_dtype=dtype,
            )
            lay = layout(engine, EngineEnv(), float(s["available_gib"]), hybrid=hybrid)  # type: ignore[arg-type]
            assert lay is not None
            tokens = lay.kv_cache_tokens
            out.append(
                {
                    "kv_cache_dtype": dtype or "bf16",
                    "hybrid_allocator": hybrid,
                    "kv_cache_tokens": tokens,
                    "max_concurrency": round(lay.max_concurrency, 2),
                    "vs_seed_tokens_pct": round(100 * (tokens / int(s["kv_cache_tokens"]) - 1), 2),  # type: ignore[call-overload]
                }
            )
    return out


# --- Per-chip HBM budget on TPU: weights + compiled programs + KV must fit one chip ------------

# Compiled XLA programs are loaded *after* vLLM sized the KV cache from HBM x utilization, so
# they must fit in the share vLLM leaves, HBM x (1 - utilization). Per chip, the headroom is the
# free HBM an upstream run *proved sufficient*, not the smallest figure measured:
# - torchax path (MODEL_IMPL_TYPE=vllm): programs "~6GiB+ at load" (a lower bound); 0.95 of a
#   94.7 GiB tpu7x chip (~4.7 GiB free) still failed with RuntimeProgramAllocationFailure, 0.90
#   ("frees ~9.5GiB for program load") passed (tpu-inference PR #3408, Gemma 4 26B/31B at TP=8 on
#   tpu7x, not v6e): 9.5 GiB, i.e. at most 0.65 on a v6e chip. 6 GiB (0.80) left 0.25 GiB over a
#   lower bound measured on another chip: no margin.
# - JAX path (flax_nnx): "has a smaller program footprint and fits at 0.98" on tpu7x (same PR),
#   and Google's GKE reference serves Gemma 4 26B on v6e at 0.95 (accelerated-platforms), which
#   leaves 1.56 GiB per v6e chip: 1.5 GiB is the bound that reference proves sufficient.
PROGRAM_HEADROOM_GIB = {"vllm": 9.5, "flax_nnx": 1.5}
BYTES_PER_PARAM = {"bfloat16": 2.0, "float16": 2.0, "auto": 2.0, "int8": 1.0, "fp8": 1.0}


@dataclass(frozen=True)
class ChipBudget:
    """One TPU chip's HBM, split the way vLLM on tpu-inference uses it (GiB)."""

    profile: str
    model: str
    chips: int  # chips one engine shards over (TP size)
    model_impl: str
    hbm_gib: float
    utilization: float
    weights_gib: float  # this chip's shard of the weights
    program_headroom_gib: float  # what compiled programs need outside vLLM's share
    reserved_gib: float  # HBM x (1 - utilization): where the programs must fit
    kv_gib: float  # HBM x utilization - weights
    one_request_gib: float  # KV of one max-model-len request on this chip
    kv_tokens: int | None  # the KV layout's tokens (vLLM's figure), when computable

    @property
    def problem(self) -> str | None:
        """Why this layout cannot start, in one line; None when it fits."""
        if self.weights_gib + self.program_headroom_gib >= self.hbm_gib:
            return (
                f"{self.weights_gib:.2f} GiB of weights per chip plus the ~"
                f"{self.program_headroom_gib:.1f} GiB of compiled programs the {self.model_impl} "
                f"path needs exceed a {self.hbm_gib:.2f} GiB v6e chip at any utilization: shard "
                f"{self.model} over more chips (TP)"
            )
        if self.reserved_gib < self.program_headroom_gib:
            return (
                f"compiled programs need ~{self.program_headroom_gib:.1f} GiB per chip outside "
                f"vLLM's share on the {self.model_impl} path, but utilization "
                f"{self.utilization} leaves {self.reserved_gib:.2f} GiB of {self.hbm_gib:.2f}: use "
                f"at most {max_utilization(self.model_impl):.2f}"
            )
        if self.kv_gib < self.one_request_gib:
            return (
                f"{self.weights_gib:.2f} GiB of weights per chip leave {self.kv_gib:.2f} GiB for KV "
                f"at utilization {self.utilization}, below the {self.one_request_gib:.2f} GiB one "
                f"{self.model} request at max-model-len needs (vLLM refuses to start): more chips "
                "(TP), smaller weights or a shorter max-model-len"
            )
        return None

    def as_dict(self) -> dict[str, object]:
        out = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        out["fits"] = self.problem is None
        out["problem"] = self.problem
        return out


def max_utilization(model_impl: str) -> float:
    """The highest --gpu-memory-utilization that leaves the compiled programs their headroom on
    a v6e chip (rounded down to 0.05)."""
    free = PROGRAM_HEADROOM_GIB.get(model_impl, PROGRAM_HEADROOM_GIB["vllm"]) * GIB
    return int((1 - free / V6E_HBM_REPORTED_BYTES) * 20) / 20


def weight_bytes(engine: EngineSettings, geo: KVGeometry) -> float:
    """All weights in bytes at the profile's dtype (``--dtype``; quantized checkpoints: the
    ``--quantization`` in ENGINE_EXTRA_ARGS)."""
    dtype = engine.dtype or "auto"
    if "--quantization" in (engine.extra_args or ""):
        dtype = "int8" if "int8" in engine.extra_args or "w8a8" in engine.extra_args else "fp8"
    return geo.params * BYTES_PER_PARAM.get(dtype, 2.0)


def chip_budget(engine: EngineSettings, runtime: EngineEnv, profile: str = "") -> ChipBudget | None:
    """The per-chip budget of a TPU profile (None off TPU or for an unknown model)."""
    geo = geometry(engine)
    if engine.platform != "tpu" or geo is None:
        return None
    tp = engine.tensor_parallel_size
    util = engine.gpu_memory_utilization or 0.9
    impl = runtime.model_impl_type or "flax_nnx"
    hbm = V6E_HBM_REPORTED_BYTES
    weights = weight_bytes(engine, geo) / tp
    one = single_request_bytes(engine, geo)
    lay = layout(engine, runtime, memory_gib=max(0.0, hbm * util - weights) * tp / GIB, geo=geo)
    return ChipBudget(
        profile=profile,
        model=engine.model,
        chips=tp,
        model_impl=impl,
        hbm_gib=hbm / GIB,
        utilization=util,
        weights_gib=weights / GIB,
        program_headroom_gib=PROGRAM_HEADROOM_GIB.get(impl, PROGRAM_HEADROOM_GIB["vllm"]),
        reserved_gib=hbm * (1 - util) / GIB,
        kv_gib=(hbm * util - weights) / GIB,
        one_request_gib=one / GIB,
        kv_tokens=lay.kv_cache_tokens if lay else None,
    )


def single_request_bytes(engine: EngineSettings, geo: KVGeometry) -> float:
    """KV bytes of one max-model-len request on one chip, as vLLM's layout allocates it (the
    blocks of every group): the minimum vLLM requires before it starts."""
    probe = layout(engine, EngineEnv(), memory_gib=1.0, geo=geo)
    if probe is None:
        return 0.0
    return float(probe.blocks_per_request * probe.bytes_per_block)


# --- Cold start: what the ready timeout must cover ----------------------------------------------

# Downloading the weights into an empty HF cache: a conservative 100 MB/s from the Hub (a
# restarted pod with the weights on its persistent volume skips it).
DOWNLOAD_BYTES_PER_S = 100e6
# Compiling every shape on an empty JAX cache: "cold-JAX-cache startup takes ~30min"
# (tpu-inference PR #3408, Gemma 4 26B/31B), so 1800 s for those; smaller models compile fewer
# and smaller programs (E2B/E4B: the project's own estimate, 900 s).
COLD_COMPILE_S = {"gemma-4-26b": 1800, "gemma-4-31b": 1800, "gemma-4-12b": 1800}
COLD_COMPILE_DEFAULT_S = 900


def cold_start_s(engine: EngineSettings) -> int | None:
    """Seconds a TPU engine needs from process start to serving on an empty HF cache and an empty
    compile cache (download + compile); None off TPU or for an unknown model."""
    geo = geometry(engine)
    if engine.platform != "tpu" or geo is None:
        return None
    name = engine.model.lower()
    compile_s = next((s for k, s in COLD_COMPILE_S.items() if k in name), COLD_COMPILE_DEFAULT_S)
    return int(weight_bytes(engine, geo) / DOWNLOAD_BYTES_PER_S) + compile_s
