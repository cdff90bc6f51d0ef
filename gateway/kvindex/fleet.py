"""The index of every replica: subscribers started and stopped with the replica set, lookups.

``KVIndex`` follows the gateway's replica set (``watch``: a static list once, a DNS set as it
changes) with one ``Subscriber`` per replica, each feeding its own ``ReplicaBlocks``. The ``kv``
routing policy asks ``cached`` for a prompt's token ids: the prompt is hashed once (the block
size is the one the replicas' full-attention events carry, ``hashing.BlockHasher``), then each
live replica's view answers how many leading tokens it holds.

Every gateway subscribes to every replica and builds the same view from the same stream (the
publisher sends each subscriber every batch; a late or lagging subscriber replays), so two
gateways score a request alike without sharing anything; between them, they differ only for the
moments one has seen a batch the other has not yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import Callable, Sequence
from typing import Protocol

from env.kvevents import subscriber_endpoints
from gateway.kvindex.hashing import ALGOS, BlockHasher
from gateway.kvindex.index import MAX_BLOCKS, ReplicaBlocks
from gateway.kvindex.subscriber import Subscriber

log = logging.getLogger("gateway.kvindex")
WATCH_S = 1.0


class _Health(Protocol):
    @property
    def instance(self) -> str | None: ...


class Watched(Protocol):
    """A replica as the index needs it (``gateway.replicas.replica.Replica``)."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def health(self) -> _Health: ...


class KVIndex:
    def __init__(
        self,
        replicas: Callable[[], Sequence[Watched]],
        port_offset: int,
        algo: str = "sha256",
        seed: str | None = None,
        max_blocks: int = MAX_BLOCKS,
    ) -> None:
        self.replicas = replicas
        self.port_offset = port_offset
        self.algo = algo
        self.seed = seed
        self.max_blocks = max_blocks
        self.usable = algo in ALGOS  # xxhash: random per-process seed, not reproducible here
        if not self.usable:
            log.warning("kv routing: --prefix-caching-hash-algo %s cannot be reproduced in the "
                        "gateway: routing falls back to prefix", algo)  # fmt: skip
        self.views: dict[str, ReplicaBlocks] = {}
        self.subscribers: dict[str, Subscriber] = {}
        self._hashers: dict[int, BlockHasher] = {}
        self._task: asyncio.Task[None] | None = None

    def hasher(self, block_size: int) -> BlockHasher:
        h = self._hashers.get(block_size)
        if h is None:
            h = self._hashers[block_size] = BlockHasher(block_size, self.algo, self.seed)
        return h

    async def start(self) -> None:
        self.sync()
        self._task = asyncio.create_task(self._watch(), name="kv-index watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sub in list(self.subscribers.values()):
            await sub.stop()
        self.subscribers.clear()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            gone = self.sync()
            for sub in gone:
                await sub.stop()

    def sync(self) -> list[Subscriber]:
        """Subscribe to replicas that joined; returns the subscribers of those that left."""
        current = {r.name: r for r in self.replicas()}
        for name, r in current.items():
            if name not in self.subscribers:
                pub, replay = subscriber_endpoints(r.url, self.port_offset)
                view = self.views[name] = ReplicaBlocks(self.max_blocks)
                sub = Subscriber(name, pub, replay, view, self.hasher,
                                 instance=lambda r=r: r.health.instance)  # fmt: skip
                self.subscribers[name] = sub
                sub.start()
        gone = [self.subscribers.pop(n) for n in list(self.subscribers) if n not in current]
        for sub in gone:
            self.views.pop(sub.name, None)
        return gone

    def live(self, name: str) -> ReplicaBlocks | None:
        """The replica's view while its publisher is connected and its hashes are not refuted."""
        sub = self.subscribers.get(name)
        view = self.views.get(name)
        if not self.usable or sub is None or view is None or not sub.connected:
            return None
        if view.verified is False:
            return None
        return view

    def cached(self, tokens: Sequence[int], names: Sequence[str]) -> dict[str, int] | None:
        """Leading tokens of ``tokens`` each named replica holds; None when no replica's view is
        live (events off, a platform that does not publish them: the caller falls back)."""
        views = {n: v for n in names if (v := self.live(n)) is not None}
        if not views:
            return None
        out = dict.fromkeys(names, 0)
        chains: dict[int, list[int]] = {}  # one chain per block size (one, in a fleet)
        for n, v in views.items():
            size = v.hash_block
            if size is None:
                continue
            if size not in chains:
                chains[size] = self.hasher(size).hashes(tokens)  # type: ignore[assignment]
            out[n] = v.cached_tokens(chains[size], size, len(tokens))
        return out

    def blocks(self) -> int:
        return sum(len(v) for v in self.views.values())

    def live_count(self) -> int:
        return sum(1 for n in self.subscribers if self.live(n) is not None)


def hash_algo(extra_args: str) -> str:
    """The engines' ``--prefix-caching-hash-algo`` (from ``ENGINE_EXTRA_ARGS``; vLLM's default
    ``sha256`` otherwise): the profile is the one place both roles read it from."""
    args = shlex.split(extra_args)
    for i, a in enumerate(args):
        if a.startswith("--prefix-caching-hash-algo="):
            return a.split("=", 1)[1]
        if a == "--prefix-caching-hash-algo" and i + 1 < len(args):
            return args[i + 1]
    return "sha256"
