"""Who the engine is: instance identity, version and configuration, read from its own endpoints.

The instance identity is the one the gateway uses (``protocol.identity.engine_instance``, derived
from ``process_start_time_seconds`` in ``/metrics``), imported rather than re-implemented so the
two sides of the handshake can never disagree about which engine is which.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from protocol.identity import engine_instance
from protocol.prometheus import metric_labels

# Labels of vllm:cache_config_info worth keeping in the report (the rest is noise).
CACHE_LABELS = ("block_size", "cache_dtype", "enable_prefix_caching", "kv_cache_size_tokens")


@dataclass
class EngineInfo:
    """Identity and versions of the engine that was warmed (goes into the report)."""

    url: str
    instance: str | None
    model: str | None = None
    version: str | None = None
    max_model_len: int | None = None
    python: str | None = None
    cache: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def current_instance(client: httpx.AsyncClient, timeout_s: float = 10) -> str | None:
    """The engine's instance identity now; raises ``httpx.TransportError`` if it is down."""
    resp = await client.get("/metrics", timeout=timeout_s)
    resp.raise_for_status()
    return engine_instance(resp.text)


async def describe(client: httpx.AsyncClient, timeout_s: float = 10) -> EngineInfo:
    """Read /metrics, /version and /v1/models once."""
    metrics = await client.get("/metrics", timeout=timeout_s)
    metrics.raise_for_status()
    info = EngineInfo(url=str(client.base_url), instance=engine_instance(metrics.text))
    python = metric_labels(metrics.text, "python_info")
    info.python = python.get("version")
    cache = metric_labels(metrics.text, "vllm:cache_config_info")
    info.cache = {k: cache[k] for k in CACHE_LABELS if k in cache}
    version = await client.get("/version", timeout=timeout_s)
    if version.status_code == 200:
        info.version = version.json().get("version")
    models = await client.get("/v1/models", timeout=timeout_s)
    if models.status_code == 200 and models.json().get("data"):
        first = models.json()["data"][0]
        info.model = first.get("id")
        info.max_model_len = first.get("max_model_len")
    return info
