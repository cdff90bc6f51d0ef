"""``Leases``: per-key concurrency and the in-flight cap for the whole fleet (``SharedSlots``,
consumed by ``gateway.state.admission.FleetAdmission``).

Why leases: a counter that a gateway increments and later decrements leaks forever when that
gateway dies between the two (SIGKILL, OOM, node loss). A lease is a member of a sorted set
whose score is its expiry on the server's clock; the holder renews all of its leases every
``ttl / 3`` s (``SharedState``'s heartbeat) and removes each when its request ends. A dead
gateway stops renewing, and every acquire drops expired members first, so its slots come back
within the TTL without anyone noticing it died. A store restarted empty is refilled by the next
renewal (it re-creates the leases the live gateways still hold).

One acquire is one script: the key's set (when the key has a concurrency limit) and the cap's
set, checked and joined together. A key at its limit is refused at once (429 ``per_key_limit``,
as in one process); a full cap waits here (polling, with the caller's keep-alives) until a slot
frees anywhere or the queue timeout passes (429 ``wait_timeout``).

Headroom between keys holds fleet-wide (``reserves``: ``gateway.admission.headroom``'s rule,
counted in Redis): each key's leases are counted in its set, and a key active in the last
``ACTIVE_S`` seconds (any gateway) is in ``gw:active``; while another key is active one key may
hold at most the cap minus the reserve, and alone all but one slot (several tenants), so a
flood spread over every gateway still leaves a slot that another key's request takes at once
(each gateway's own headroom alone left one slot *per gateway*: a flood through N gateways
could hold the whole cap).

The order in which waiting requests get freed slots is the fleet's: a request that finds the cap
full takes a place in ``gw:wait`` ordered as ``gateway.admission.fairqueue`` orders one
process's queue (priority classes first, then start-time fair queuing between keys by weight,
with the virtual clocks in Redis, costs in tokens), and a freed slot goes only to a request with
fewer waiters ahead of it than slots are free, whichever gateway polls first. Every grant
charges its key its prompt tokens; ``release`` adds what it generated and corrects the prompt
to the engine's count (one more command in the release's pipeline). Each gateway's own queue
still orders its requests before they reach the fleet (its cap is the fleet's, so every
request it admits is at the fleet's door at once).

Store unavailable: ``local`` counts this gateway's own leases against its share of each limit
(``limit // live gateways``); they are renewed into the store once it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.admission.headroom import ACTIVE_S
from gateway.errors import RateLimited, rate_limited, request_limits
from gateway.state.link import share
from gateway.state.scripts import ACQUIRE
from gateway.state.store import PREFIX, SharedState, StateDown

KEY_SET = PREFIX + "lease:key:"
CAP_SET = PREFIX + "lease:inflight"
CLASS_SET = PREFIX + "lease:class:"  # + class: its leases, where it holds less than the cap
ACTIVE = PREFIX + "active"  # key -> when it last asked for a slot (server time)
WAITERS = PREFIX + "wait"  # member -> its order (class, then start tag): who gets a freed slot
WAITER_EXPIRY = PREFIX + "wait:until"  # member -> when its place lapses (renewed by its polls)
VTIME = PREFIX + "vt:"  # + class: the class's virtual time (start-time fair queuing)
FINISH = PREFIX + "fin:"  # + class:key: the key's virtual finish in its class
# A waiter polls at least every 0.2 s; its place lapses after this without one (a dead or
# stalled gateway's waiters stop holding the others back; a stalled one takes its place back
# with the order it was given).
WAIT_PLACE_S = 2.0
_POLL_S = (0.02, 0.05, 0.1, 0.2)  # a full cap is re-tried after these, then every 0.2 s
# A key at its limit is checked again after these before the 429: a client that sends its next
# request through another gateway the moment its last answer ended must not be refused because
# that answer's release (queued in its gateway's outbox) lands a millisecond later.
_RECHECK_S = (0.005, 0.02)


@dataclass(eq=False)
class Lease:
    member: str
    key: str
    key_set: str | None  # None: the key has no concurrency limit
    released: bool = False
    finish: str = ""  # its key's finish in its class's fair order, charged ``cost / weight``
    cost: float = 0.0
    weight: float = 1.0
    class_set: str | None = None  # None: its class may hold the whole cap


class Leases:
    def __init__(self, state: SharedState) -> None:
        self.state = state
        state.leases = self
        self._held: dict[str, Lease] = {}
        self._seq = itertools.count(1)
        self._freed = asyncio.Event()

    def held(self) -> list[tuple[str, str]]:
        """Every (lease set, member) this gateway holds (what the heartbeat renews)."""
        out = []
        for lease in self._held.values():
            out.append((CAP_SET, lease.member))
            if lease.key_set is not None:
                out.append((lease.key_set, lease.member))
            if lease.class_set is not None:
                out.append((lease.class_set, lease.member))
        return out

    def count(self, key: str | None = None) -> int:
        if key is None:
            return len(self._held)
        return sum(1 for lease in self._held.values() if lease.key == key)

    async def acquire(
        self,
        key: str,
        key_limit: int,
        cap: int,
        on_wait: Callable[[], Awaitable[None]] | None = None,
        tick_s: float = 0.0,
        timeout_s: float = 30.0,
        reserves: tuple[int, int] = (0, 0),
        order: tuple[int, float, float] = (0, 1.0, 1.0),
        class_cap: int = 0,
    ) -> Lease:
        """A lease on one of ``cap`` fleet-wide slots (and one of the key's ``key_limit``, if
        > 0), waiting up to ``timeout_s`` for the cap, and for the key's share of it while
        ``reserves`` (others active, alone: ``KeyShares.reserves``) are kept for other keys;
        ``order``: the request's (priority, weight, cost), its place among the fleet's waiters;
        ``class_cap`` > 0: its class holds at most that many of the cap (it waits for one).
        Raises the 429 (or the ``closed`` 503)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout_s
        next_tick = start + tick_s if on_wait is not None and tick_s > 0 else math.inf
        polls = iter(_POLL_S)
        member = f"{self.state.id}:{next(self._seq)}"
        key_set = KEY_SET + key if key_limit > 0 or reserves[0] > 0 else None
        recheck = iter(_RECHECK_S)
        place = _Place(order, class_cap)
        try:
            while True:
                verdict = await self._try(member, key, key_set, key_limit, cap, reserves, place)
                if verdict == 0:
                    prio, weight, cost = order
                    lease = Lease(
                        member, key, key_set, False, f"{FINISH}{prio}:{key}", cost, weight,
                        f"{CLASS_SET}{prio}" if class_cap > 0 and cap > 0 else None,
                    )  # fmt: skip
                    self._held[member] = lease
                    return lease
                if verdict == 1 and (pause := next(recheck, None)) is not None:
                    await asyncio.sleep(pause)  # a release on its way from another gateway
                    continue
                if verdict == 1:
                    raise _refused(
                        "per_key_limit",
                        f"too many concurrent requests for this API key (limit {key_limit}, "
                        "across all gateways)", key_limit,
                    )  # fmt: skip
                now = loop.time()
                if now >= deadline:
                    raise _refused(
                        "wait_timeout",
                        f"request waited {timeout_s:g} s for one of the {cap} in-flight slots "
                        "shared by all gateways", cap,
                    )  # fmt: skip
                if now >= next_tick and on_wait is not None:
                    next_tick = now + tick_s
                    await on_wait()
                pause = min(next(polls, _POLL_S[-1]), max(0.0, deadline - loop.time()))
                self._freed.clear()
                # A local release wakes at once; a remote one is seen at the next poll.
                with contextlib.suppress(TimeoutError):  # asyncio.timeout keeps a cancel
                    async with asyncio.timeout(pause):
                        await self._freed.wait()
        finally:
            if place.order:  # still among the fleet's waiters (a 429, a cancel): leave now
                self.state.send(("ZREM", WAITERS, member))
                self.state.send(("ZREM", WAITER_EXPIRY, member))

    async def _try(
        self, member: str, key: str, key_set: str | None, key_limit: int, cap: int,
        reserves: tuple[int, int], place: _Place,
    ) -> int:  # fmt: skip
        """0 granted, 1 key at its limit, 2 cap full (or its free slots are the turn of
        waiters ahead, or the key is at its share of it: it waits as for a full cap): from the
        store, else from the shares."""
        prio, weight, cost = place.sched
        try:
            reply = await self.state.script(
                ACQUIRE, [key_set or KEY_SET, CAP_SET, ACTIVE, WAITERS, WAITER_EXPIRY,
                          f"{VTIME}{prio}", f"{FINISH}{prio}:{key}", f"{CLASS_SET}{prio}"],
                ["", self.state.ttl_s, member, key_limit if key_set else 0, cap,
                 1 if key_set else 0, *reserves, ACTIVE_S, key, prio, weight, place.order,
                 WAIT_PLACE_S, cost, place.class_cap],
            )  # fmt: skip
            verdict = int(reply[0])
            if verdict == 2:
                place.order = str(reply[3])
            elif verdict != 1:  # granted, or waiting for its key's share: the script took its
                place.order = ""  # place back; at its key's limit it still holds one
            return min(2, verdict)
        except StateDown:
            self.state.local_or_refuse()
        n = self.state.gateways
        if key_limit > 0 and self.count(key) >= share(key_limit, n):
            return 1
        if cap > 0 and self.count() >= share(cap, n):
            return 2
        return 0

    def release(self, lease: Lease, used: float | None = None) -> None:
        """Give the slot back (idempotent): at once here, through the outbox in the store;
        ``used`` (the request's tokens, if known) settles the cost its grant charged."""
        if lease.released:
            return
        lease.released = True
        self._held.pop(lease.member, None)
        self._freed.set()
        self.state.send(("ZREM", CAP_SET, lease.member))
        if lease.key_set is not None:
            self.state.send(("ZREM", lease.key_set, lease.member))
        if lease.class_set is not None:
            self.state.send(("ZREM", lease.class_set, lease.member))
        if used is not None and lease.finish and used != lease.cost:
            delta = (used - lease.cost) / lease.weight  # the finish key lives an hour idle
            self.state.send(("INCRBYFLOAT", lease.finish, f"{delta:.17g}"))
            self.state.send(("EXPIRE", lease.finish, 3600))


class _Place:
    """A waiting request's place among the fleet's waiters: its (priority, weight, cost), its
    class's share of the cap, and the order the store gave it ('' while it holds none)."""

    __slots__ = ("class_cap", "order", "sched")

    def __init__(self, sched: tuple[int, float, float], class_cap: int = 0) -> None:
        self.sched = sched
        self.class_cap = class_cap
        self.order = ""


def _refused(code: str, message: str, limit: int) -> RateLimited:
    return rate_limited(message, code, retry_after=1, limits=request_limits(limit, 0, 1))
