"""The admission queue's order: priority classes, and weighted fair queuing between keys in one.

Why: one FIFO lets a single key that queues a hundred requests push every other key's TTFT up by
a hundred service times. Here every key (a *flow*) has its own FIFO; between the flows of one
class the next request is picked by start-time fair queuing (SFQ, Goyal et al. 1996): each flow
carries the virtual finish time of its last served request, a request's start tag is
``max(class virtual time, its flow's finish)``, the smallest start tag is served, its flow's
finish becomes ``start + cost / weight`` and the class's virtual time becomes that start. So a
key's share is its weight over the weights of the keys *waiting* now, whatever the number of
requests it queued: a newcomer's first request starts at the current virtual time.

The cost is the request's tokens (``Sched.cost``: its prompt when it is served, estimated;
``settle`` adds what the engine reports it generated and corrects the prompt to the engine's
count), the Virtual Token Counter of Sheng et al., "Fairness in Serving Large Language Models"
(OSDI 2024). Counted per *request*, a key that sends short requests gets no more turns than one
that sends long ones: measured, eight keys of 100-token streams held a key of 4-token requests
to a ninth of the turns, below the one a second it sent, and its wait grew without bound
(``bench fairness --flood-keys 8``). Not the tpm's reservation (prompt bound + max_tokens): a
key's requests that wait together are each charged before any is settled, and a short prompt's
bound (its bytes + 256) made a key of 4-token requests look heavier than the keys of 100-token
streams, measured through the fleet's order. A cost of 1 (the default) is the order per
request. Equal start tags go to the flow whose own finish is lower (the key that used less),
then by arrival: settled refunds leave many flows' finish below the virtual time, where ``max``
ties them, and arrival order alone then served the oldest queued first, a flood's, as FIFO
would (measured: the tokens alone changed nothing until this tie-break).

Classes are strict priorities: a higher ``priority`` is always served first when it is
*eligible* (the caller decides: ``Admission`` bounds each class's share of the in-flight cap).
When the queue is full, ``victim`` names the request to drop for a newcomer (longest-queue
drop): the newest request of the longest flow in the lowest class below the newcomer's, or in
its own class a flow longer than the newcomer's would be after joining by more than one.

``fair=False`` is a single FIFO (every entry in one flow of one class): the old behaviour, kept
for the fairness benchmark's comparison.

Pure and deterministic: no clock, no asyncio.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sched:
    """How one request is scheduled: its class, weight, wait budget and caps (from its key)."""

    priority: int = 0  # higher is served first
    weight: float = 1.0  # share between keys of one class
    queue_timeout_s: float | None = None  # None: the admission's default
    max_concurrency: int = 0  # in flight + queued for this key; 0: the admission's default
    inflight_share: float = 1.0  # the class's share of the in-flight cap
    name: str = "default"  # the class's name, for messages and metrics
    cost: float = 1.0  # this request's cost in the fair order when served (its prompt tokens)


DEFAULT_SCHED = Sched()


def class_share(share: float, cap: int) -> int:
    """The slots a class may hold of ``cap`` (its ``Sched.inflight_share``); 0: all of them."""
    return 0 if share >= 1.0 else max(1, math.floor(share * cap))


@dataclass(eq=False)
class Entry:
    """One queued request: its key (flow), class and weight; ``payload`` is the caller's."""

    key: str
    priority: int = 0
    weight: float = 1.0
    payload: object = None
    cost: float = 1.0  # what serving it adds to its flow's finish (times 1 / weight)
    seq: int = field(default=0, init=False)
    flow: _Flow | None = field(default=None, init=False, repr=False)


class _Flow:
    __slots__ = ("finish", "items", "key", "weight")

    def __init__(self, key: str, weight: float) -> None:
        self.key = key
        self.weight = weight
        self.items: deque[Entry] = deque()
        self.finish = 0.0  # virtual finish time of the last served request


class _Class:
    __slots__ = ("count", "flows", "priority", "vtime")

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.flows: dict[str, _Flow] = {}
        self.vtime = 0.0
        self.count = 0

    def start(self, flow: _Flow) -> float:
        return max(self.vtime, flow.finish)


class FairQueue:
    def __init__(self, fair: bool = True) -> None:
        self.fair = fair
        self._classes: dict[int, _Class] = {}
        self._order: list[int] = []  # priorities, highest first
        self._seq = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def count(self, priority: int) -> int:
        cls = self._classes.get(priority if self.fair else 0)
        return cls.count if cls else 0

    def __iter__(self) -> Iterator[Entry]:
        """Every queued entry (no particular order)."""
        for cls in self._classes.values():
            for flow in cls.flows.values():
                yield from flow.items

    def push(self, entry: Entry) -> None:
        prio, key = (entry.priority, entry.key) if self.fair else (0, "")
        cls = self._classes.get(prio)
        if cls is None:
            cls = self._classes[prio] = _Class(prio)
            self._order = sorted(self._classes, reverse=True)
        flow = cls.flows.get(key)
        if flow is None:
            flow = cls.flows[key] = _Flow(key, entry.weight)
        flow.weight = entry.weight  # the latest (a keys-file reload may change it)
        self._seq += 1
        entry.seq = self._seq
        entry.flow = flow
        flow.items.append(entry)
        cls.count += 1
        self._len += 1

    def pop(
        self,
        eligible: Callable[[int], bool] | None = None,
        flow_ok: Callable[[str], bool] | None = None,
    ) -> Entry | None:
        """The next entry of the highest eligible class with any, or None; ``flow_ok`` skips
        the flows (keys) that may not be served now (over their share of the slots)."""
        for prio in self._order:
            cls = self._classes[prio]
            if cls.count and (eligible is None or eligible(prio)):
                entry = self._pop(cls, flow_ok)
                if entry is not None:
                    return entry
        return None

    def peek_priority(self, eligible: Callable[[int], bool] | None = None) -> int | None:
        """The class ``pop`` would serve, without serving it."""
        for prio in self._order:
            if self._classes[prio].count and (eligible is None or eligible(prio)):
                return prio
        return None

    def remove(self, entry: Entry) -> bool:
        """Take ``entry`` out (a disconnect, a timeout); False if it is not queued."""
        flow = entry.flow
        if flow is None:
            return False
        try:
            flow.items.remove(entry)
        except ValueError:
            return False
        entry.flow = None
        self._classes[entry.priority if self.fair else 0].count -= 1
        self._len -= 1
        return True

    def victim(self, key: str, priority: int) -> Entry | None:
        """What to drop so that a newcomer (``key``, ``priority``) can join a full queue."""
        if not self.fair:
            return None
        for prio in reversed(self._order):  # lowest class first
            if prio > priority:
                break
            cls = self._classes[prio]
            if not cls.count:
                continue
            longest = max(
                (f for f in cls.flows.values() if f.items),
                key=lambda f: (len(f.items), f.items[-1].seq),
            )
            if prio < priority:
                return longest.items[-1]
            own = cls.flows.get(key)
            own_len = len(own.items) if own is not None else 0
            if longest.key != key and len(longest.items) > own_len + 1:
                return longest.items[-1]
        return None

    def settle(self, key: str, priority: int, charged: float, used: float | None) -> None:
        """A served request's true cost: its flow's finish moves by ``used - charged`` (what
        it used, minus its ``Entry.cost`` charged when it was served; 0: it never queued)."""
        if not charged or used is None or not self.fair:
            return
        cls = self._classes.get(priority)
        flow = cls.flows.get(key) if cls is not None else None
        if flow is not None:
            flow.finish += (used - charged) / flow.weight

    def ahead(self, entry: Entry) -> int:
        """About how many queued entries will be served before ``entry`` (for Retry-After)."""
        own = entry.flow
        if own is None:
            return 0
        prio = entry.priority if self.fair else 0
        n = sum(self._classes[p].count for p in self._order if p > prio)
        cls = self._classes[prio]
        mine = _tags(cls, own)[own.items.index(entry)]
        return n + sum(sum(1 for t in _tags(cls, flow) if t < mine) for flow in cls.flows.values())

    def _pop(self, cls: _Class, flow_ok: Callable[[str], bool] | None = None) -> Entry | None:
        best: _Flow | None = None
        best_tag = (math.inf, math.inf, 0)
        for flow in cls.flows.values():
            if flow.items and (flow_ok is None or flow_ok(flow.key)):
                tag = (cls.start(flow), flow.finish, flow.items[0].seq)
                if tag < best_tag:
                    best, best_tag = flow, tag
        if best is None:
            return None
        entry = best.items.popleft()
        entry.flow = None
        cls.vtime = best_tag[0]
        best.finish = best_tag[0] + entry.cost / best.weight
        cls.count -= 1
        self._len -= 1
        return entry


def _tags(cls: _Class, flow: _Flow) -> list[tuple[float, float, int]]:
    """The order keys ``_pop`` will serve the entries queued in ``flow`` by (if nothing
    changes): start tag, the flow's finish (ties go to the key that used less), arrival."""
    tag, finish, out = cls.start(flow), flow.finish, []
    for e in flow.items:
        out.append((tag, finish, e.seq))
        tag = finish = tag + e.cost / flow.weight
    return out
