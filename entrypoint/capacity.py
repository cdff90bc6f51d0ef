"""KV-cache capacity estimate: how many full-context sequences fit in accelerator memory.

Used only for a preflight *warning* (max-num-seqs above what the KV cache can hold at full
context). Geometry from the published Gemma 4 model configs (``config.json``: ``layer_types``,
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
V6E_HBM_BYTES = 32 * 10**9  # per chip


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
