"""What the engine reported about its memory at start, read back from its log.

vLLM 0.32 logs the KV cache it allocated once per start (``vllm/v1/core/kv_cache_utils.py``,
``update_kv_cache_capacity``)::

    (EngineCore pid=1467) INFO ... CPU KV cache size: 1,342,177 tokens, Maximum concurrency for 2,048 tokens per request: 655.36x

(``GPU``/``TPU`` on accelerators). Lines about HBM and available KV memory (TPU and GPU workers
word them differently from release to release) are kept verbatim. The launcher keeps the
engine's output in a known file (``OPS_ENGINE_LOG_FILE``, default ``<CACHE_HOT_DIR>/engine.log``),
truncated at each start, so the last match is the running engine's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

KV_LINE = re.compile(
    r"(?P<device>[A-Za-z]+(?: \+ host)?) KV cache size: (?P<tokens>[\d,]+) tokens, "
    r"Maximum concurrency for (?P<len>[\d,]+) tokens per request: (?P<conc>[\d.]+)x"
)
MEMORY_LINE = re.compile(r"HBM|Available KV cache memory|KV cache memory|memory profiling", re.I)
CACHE_LINE = re.compile(r"^entrypoint: (compile cache .*)$", re.M)
MAX_READ = 16 * 1024 * 1024  # the start-up lines are near the top; never read a huge log whole


@dataclass
class EngineReport:
    device: str | None = None
    kv_cache_tokens: int | None = None
    max_model_len: int | None = None
    max_concurrency: float | None = None
    memory_lines: list[str] = field(default_factory=list)
    compile_cache: str | None = None


def parse(text: str) -> EngineReport:
    out = EngineReport()
    for m in KV_LINE.finditer(text):  # the last one wins (one start per file, but be safe)
        out.device = m["device"]
        out.kv_cache_tokens = int(m["tokens"].replace(",", ""))
        out.max_model_len = int(m["len"].replace(",", ""))
        out.max_concurrency = float(m["conc"])
    out.memory_lines = [
        line.strip()[:300] for line in text.splitlines() if MEMORY_LINE.search(line)
    ][-12:]
    if cache := CACHE_LINE.findall(text):
        out.compile_cache = cache[-1]
    return out


def read(path: Path) -> EngineReport | None:
    """The report from ``path``; None if the file cannot be read."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_READ)
    except OSError:
        return None
    return parse(data.decode(errors="replace"))
