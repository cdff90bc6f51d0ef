"""Chip-time ledger: engine busy time charged to API keys (``core.py`` has the model).

``Ledger`` keeps one ``ReplicaLedger`` per replica, feeds it the monitor's engine samples from
its own loop (every ``GATEWAY_METRICS_POLL_S``: it reads ``replica.monitor.sample``, it never
polls the engine itself), records each finished request's work (called by the service where the
request is settled), and exports:

- ``gateway_key_chip_seconds_total{key,phase}``: busy seconds x chips per replica, per key and
  phase (prefill, decode);
- ``gateway_key_chip_cost_usd_total{key}``: the same at the deployment's price
  (``PRICE_PER_HOUR_USD`` / 3600 / the deployment's chips; absent without a price);
- ``gateway_replica_busy_seconds_total{replica}``: the measured busy time the keys share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from gateway.ledger.core import EngineCounters, ReplicaLedger, Work

__all__ = ["EngineCounters", "Ledger", "ReplicaLedger", "Work"]


class Sample(Protocol):
    """The engine sample the ledger reads (``gateway.replicas.saturation.EngineSample``)."""

    at: float
    running: float
    prefill_s: float
    prefill_tokens: float
    decode_s: float
    decode_tokens: float


class Sampled(Protocol):
    """What the ledger reads of a replica (``gateway.replicas.replica.Replica``)."""

    @property
    def name(self) -> str: ...

    @property
    def sample(self) -> Sample | None: ...


@dataclass
class KeyUsage:
    requests: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    decode_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


class Ledger:
    def __init__(
        self,
        registry: CollectorRegistry,
        chips_each: int,
        price_per_chip_s: float | None,
        settle_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chips_each = chips_each
        self.price_per_chip_s = price_per_chip_s
        self.settle_every_s = settle_every_s
        self.clock = clock
        self.replicas: dict[str, ReplicaLedger] = {}
        self.keys: dict[str, KeyUsage] = {}
        self._settled: dict[str, float] = {}
        self.chip_seconds = Counter(
            "gateway_key_chip_seconds", "Accelerator chip-seconds charged to each key, by phase "
            "(engine busy time split by the keys' prefill and decode work)",
            ["key", "phase"], registry=registry,
        )  # fmt: skip
        self.cost: Counter | None = None
        if price_per_chip_s is not None:
            self.cost = Counter(
                "gateway_key_chip_cost_usd", "The keys' chip-seconds at the deployment's price "
                "(PRICE_PER_HOUR_USD)", ["key"], registry=registry,
            )  # fmt: skip
        # Alone this gateway keeps its ledger. In a fleet (gateway.state.ledger) one gateway
        # does: the others send their finished work there (``remote``) and charge nothing.
        self.leader = True
        self.remote: Callable[[str, Work], None] | None = None
        self.busy = Counter(
            "gateway_replica_busy_seconds", "Engine busy time (a request running), from its "
            "sampled vllm:num_requests_running", ["replica"], registry=registry,
        )  # fmt: skip

    def _replica(self, name: str) -> ReplicaLedger:
        r = self.replicas.get(name)
        if r is None:
            r = self.replicas[name] = ReplicaLedger()
            self._settled[name] = self.clock()
        return r

    def finished(self, replica: str, key: str, prompt: int, cached: int, completion: int) -> None:
        """A request that ran on ``replica`` finished (called once, where it is settled)."""
        u = self.keys.setdefault(key, KeyUsage())
        u.requests += 1
        u.prefill_tokens += max(0, prompt - cached)
        u.cached_tokens += cached
        u.decode_tokens += completion
        work = Work(key, max(0, prompt - cached), completion)
        if self.leader or self.remote is None:
            self._replica(replica).finished(work)
        else:
            self.remote(replica, work)

    def record(self, replica: str, work: Work) -> None:
        """Work another gateway of the fleet finished (this one keeps the fleet's ledger)."""
        self._replica(replica).finished(work)

    def lead(self, leader: bool) -> None:
        """Take or give up the fleet's ledger. A new leader starts from its next engine samples
        (none of the busy time before them is its to charge); one that stops hands the work it
        had not settled to the new leader, and its busy time not charged yet is dropped (the
        new leader measures its own from its first samples)."""
        if leader == self.leader:
            return
        if not leader and self.remote is not None:
            for name, r in self.replicas.items():
                for work in r.work:
                    self.remote(name, work)
        self.leader = leader
        self.replicas.clear()
        self._settled.clear()

    def observe(self, replica: str, sample: EngineCounters) -> None:
        r = self._replica(replica)
        busy = r.observe(sample)
        if busy:
            self.busy.labels(replica).inc(busy)
        now = self.clock()
        if r.due(now, self.settle_every_s, self._settled[replica]):
            self._charge(r.settle())
            self._settled[replica] = now

    def _charge(self, seconds: dict[tuple[str, str], float]) -> None:
        for (key, phase), s in seconds.items():
            chip_s = s * self.chips_each
            self.chip_seconds.labels(key, phase).inc(chip_s)
            u = self.keys.setdefault(key, KeyUsage())
            if phase == "prefill":
                u.prefill_s += chip_s
            else:
                u.decode_s += chip_s
            if self.cost is not None and self.price_per_chip_s is not None:
                self.cost.labels(key).inc(chip_s * self.price_per_chip_s)

    def poll(self, replicas: Sequence[Sampled]) -> None:
        """Feed every replica's latest engine sample (a repeated one is ignored); in a fleet,
        only the gateway that keeps the ledger measures."""
        if not self.leader:
            return
        for rep in replicas:
            s = rep.sample
            r = self.replicas.get(rep.name)
            if s is not None and (r is None or r.last is None or s.at != r.last.at):
                c = EngineCounters(s.at, s.running, s.prefill_s, s.prefill_tokens, s.decode_s,
                                   s.decode_tokens)  # fmt: skip
                self.observe(rep.name, c)

    async def run(self, replicas: Callable[[], Sequence[Sampled]], every_s: float) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self.poll(replicas())
                await asyncio.sleep(every_s)
