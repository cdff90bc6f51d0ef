"""Which KV blocks each replica holds, from its own events: the pure core (no I/O, no clock).

One ``ReplicaBlocks`` per replica, fed decoded event batches in sequence order by the subscriber
(``subscriber.py``), asked by the ``kv`` routing policy how many leading tokens of a prompt the
replica would find in its prefix cache.

What the engine publishes (vLLM 0.32, ``vllm/v1/core/block_pool.py``, seen on the CPU engine
with the tiny Gemma 4): one ``BlockStored`` per KV-cache *group* per step, carrying the group's
index, kind and block size. Gemma 4 has two groups: ``full_attention`` (block size =
``--block-size``, one hash per block, chained over the prefix) and ``sliding_window`` (its pages
unified to a larger block, e.g. 256 tokens for a 128-token window; it keeps only the blocks that
cover the window before each cached boundary, named by the chain hash at the block's end). A
cache hit is the longest prefix ``L`` that every group can serve: all full-attention blocks up to
``L``, the sliding-window blocks covering the window that ends at ``L``, ``L`` a multiple of every
group's block size (the engine logs the "kv lcm block size"), and at most the prompt's length - 1
(the engine always computes the last token). ``cached_tokens`` models exactly that; vLLM's own
``HybridKVCacheCoordinator`` is the reference (``tests/gateway/test_kv_routing_e2e.py`` compares
the prediction with the engine's ``vllm:prefix_cache_hits_total``).

Bounded: at most ``max_blocks`` entries per replica (oldest stored first out: a forgotten block is
a missed prediction, never a false one). Sequence numbers come from the publisher (``seq``, from 0
per publisher): ``check`` says whether a batch follows the last one, starts a new publisher (an
engine restart: its cache is empty) or leaves a gap (the subscriber replays, else resets).
Offloaded copies (``medium`` other than the device's) are ignored: the prefix cache hits only
device blocks.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.kvindex.events import Batch, Cleared, Removed, Stored

_MASK = (1 << 64) - 1
DEVICE_MEDIA = frozenset({None, "GPU"})  # vLLM's device tier is named "GPU" on every platform
MAX_BLOCKS = 262_144  # per replica: ~30 MB of index at most
Order = Literal["next", "restart", "gap"]


def _key(h: int | bytes) -> int:
    return (int.from_bytes(h, "big") if isinstance(h, bytes) else h) & _MASK


@dataclass
class Group:
    """A KV-cache group as its events describe it."""

    block_size: int
    sliding_window: int | None = None  # tokens; None: full attention (or unknown: held as full)


@dataclass
class ReplicaBlocks:
    """One replica's view: (group, hash) entries, its groups, the last sequence number applied."""

    max_blocks: int = MAX_BLOCKS
    blocks: OrderedDict[tuple[int, int], None] = field(default_factory=OrderedDict)
    groups: dict[int, Group] = field(default_factory=dict)
    last_seq: int | None = None
    verified: bool | None = None  # the gateway's hashes matched a first block (False: never use)
    resets: int = 0

    def check(self, seq: int) -> Order:
        """Where ``seq`` stands against the last batch applied."""
        if self.last_seq is None or seq == self.last_seq + 1:
            return "next"
        return "restart" if seq <= self.last_seq else "gap"

    def reset(self) -> None:
        """Forget everything (a new engine instance, a gap not replayed, a malformed batch)."""
        self.blocks.clear()
        self.groups.clear()
        self.last_seq = None
        self.verified = None  # a new engine may hash differently: checked again
        self.resets += 1

    def apply(self, seq: int, batch: Batch) -> list[Stored]:
        """Apply one batch; returns its first-block stores (the caller may verify hashes)."""
        firsts: list[Stored] = []
        for ev in batch.events:
            if isinstance(ev, Stored):
                if ev.medium not in DEVICE_MEDIA:
                    continue
                g = ev.group_idx or 0
                window = ev.kv_cache_spec_sliding_window
                sliding = ev.kv_cache_spec_kind == "sliding_window"
                self.groups[g] = Group(ev.block_size, window if sliding else None)
                for h in ev.block_hashes:
                    k = (g, _key(h))
                    self.blocks[k] = None
                    self.blocks.move_to_end(k)
                if ev.parent_block_hash is None and not sliding:
                    firsts.append(ev)
            elif isinstance(ev, Removed):
                if ev.medium not in DEVICE_MEDIA:
                    continue
                groups = [ev.group_idx] if ev.group_idx is not None else list(self.groups) or [0]
                for h in ev.block_hashes:
                    for g in groups:
                        self.blocks.pop((g, _key(h)), None)
            elif isinstance(ev, Cleared):
                self.blocks.clear()
        while len(self.blocks) > self.max_blocks:
            self.blocks.popitem(last=False)
        self.last_seq = seq
        return firsts

    @property
    def hash_block(self) -> int | None:
        """Tokens per hash of the chain (the full-attention groups' block size, the engine's
        ``--block-size``); None until a full-attention store was seen."""
        return min((x.block_size for x in self.groups.values() if x.sliding_window is None),
                   default=None)  # fmt: skip

    def cached_tokens(self, hashes: Sequence[int], hash_block: int, prompt_len: int) -> int:
        """Leading tokens of a prompt (its chain ``hashes`` at ``hash_block`` tokens, its length
        ``prompt_len``) that this replica's prefix cache would serve."""
        if not self.groups or not hashes or self.verified is False:
            return 0
        blocks = self.blocks
        full = [(g, x) for g, x in self.groups.items() if x.sliding_window is None]
        sliding = [(g, x) for g, x in self.groups.items() if x.sliding_window is not None]
        n = len(hashes)
        length = n * hash_block
        for g, x in full:
            step = max(1, x.block_size // hash_block)
            j = step
            while j <= n and (g, hashes[j - 1]) in blocks:
                j += step
            length = min(length, (j - step) * hash_block)
        unit = math.lcm(*(x.block_size for x in self.groups.values()))
        length = min(length, max(0, prompt_len - 1)) // unit * unit
        while length > 0 and not all(
            _covers(blocks, g, x, hashes, hash_block, length) for g, x in sliding
        ):
            length -= unit
        return length

    def __len__(self) -> int:
        return len(self.blocks)


def _covers(
    blocks: OrderedDict[tuple[int, int], None],
    g: int,
    x: Group,
    hashes: Sequence[int],
    hash_block: int,
    end: int,
) -> bool:
    """Whether sliding-window group ``g`` holds the blocks covering the window ending at ``end``."""
    need = max(1, math.ceil(((x.sliding_window or 1) - 1) / x.block_size))
    for i in range(need):
        boundary = end - i * x.block_size
        if boundary <= 0:
            break
        if (g, hashes[boundary // hash_block - 1]) not in blocks:
            return False
    return True
