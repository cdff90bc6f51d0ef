"""Admission control: a global in-flight cap, a bounded queue in fair order, per-key caps.

Why: the engine alone accepts everything and then queues without bound, preempts, or OOMs; a
client that waits minutes times out and retries, doubling the load. The gateway keeps at most
``max_inflight`` requests upstream (``set_capacity``: the ready replicas' sum, changeable at run
time), lets a bounded number wait for at most their class's queue timeout, and refuses the rest
at once with a ``Retry-After`` computed from the rate at which slots were actually freed.

The queue's order is ``fairqueue.FairQueue``: priority classes (interactive before batch),
weighted fair queuing between keys within a class (a key that queues a hundred requests does not
push every other key's TTFT up by a hundred service times), and no key holds every slot while
others are active (``headroom.py``). A class holds at most its share of the cap
(``Sched.inflight_share``: batch below 1): as the gateway fills, batch is held first. A full
queue drops the newest request of the longest flow (lower classes first) for a newcomer with
fewer queued. ``fair=False``: the plain FIFO. While the engines report saturation
(``set_saturated``) nothing new goes upstream, half way there (``set_pressured``) only the top
class does; when it clears, the queue drains in priority and fair order.

``async with admission.slot(key, on_wait, tick, sched) as ticket``: admitted or queued
(``on_wait`` every ``wait_tick_s`` while queued: an SSE keep-alive), ``Rejected`` (429) when the
queue is full or the wait runs out, the slot released on every exit path. Its steps are public
for the unit tests. Single event loop, no locks; an injectable clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

from gateway.admission.fairqueue import DEFAULT_SCHED, Entry, FairQueue, Sched, class_share
from gateway.admission.headroom import KeyShares
from gateway.errors import RateLimited, rate_limited, request_limits

# Drain-rate window: the last N releases within W seconds.
_DRAIN_SAMPLES = 256
_DRAIN_WINDOW_S = 60.0


# The 429 from admission; ``code`` is the reason (queue_full, wait_timeout, per_key_limit).
Rejected = RateLimited


def _rejected(code: str, message: str, retry_after: int, limit: int) -> RateLimited:
    limits = request_limits(limit, 0, retry_after)
    return rate_limited(message, code, retry_after=retry_after, limits=limits)


@dataclass(eq=False)
class Ticket:
    """One admitted request. Release exactly once (``Admission.release`` is idempotent)."""

    key: str
    admitted_at: float
    queued_s: float = 0.0
    released: bool = False
    priority: int = 0
    charged: float = 0.0  # its cost in the fair order, if the queue served it (0: at once)
    used: float | None = None  # its tokens, if known by its release: they replace ``charged``


@dataclass(eq=False)
class Waiter:
    """A queued request; ``future`` resolves to its ticket when a slot frees up (or to a
    ``Rejected`` when a newcomer pushed it out of a full queue)."""

    key: str
    enqueued_at: float
    future: asyncio.Future[Ticket]
    sched: Sched = DEFAULT_SCHED
    entry: Entry | None = field(default=None, repr=False)
    cancelled: bool = field(default=False)


class Admission:
    def __init__(
        self,
        max_inflight: int,
        queue_depth: int,
        queue_timeout_s: float,
        per_key_limit: int = 0,
        max_retry_after_s: int = 120,
        clock: Callable[[], float] = time.monotonic,
        fair: bool = True,
        shares: KeyShares | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.max_inflight = max_inflight
        self.queue_depth = queue_depth
        self.queue_timeout_s = queue_timeout_s
        self.per_key_limit = per_key_limit
        self.max_retry_after_s = max_retry_after_s
        self.fair = fair
        self._clock = clock
        self._inflight = 0
        self._queue = FairQueue(fair)
        self._per_key: dict[str, int] = {}  # queued + in flight, per key
        self._keys = shares or KeyShares()  # no key holds every slot while others wait or may come
        self._class_inflight: dict[int, int] = {}
        self._shares: dict[int, float] = {}
        self._releases: deque[float] = deque(maxlen=_DRAIN_SAMPLES)
        self._saturated = self._pressured = False

    # -- observation -------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def queued(self) -> int:
        return len(self._queue)

    def gauges(self) -> tuple[int, int]:
        """Upstream and waiting: ``gateway_inflight``, ``gateway_queue_depth`` (a fleet's
        admission counts the slots still awaiting their lease as waiting)."""
        return self._inflight, len(self._queue)

    @property
    def saturated(self) -> bool:
        return self._saturated

    def inflight_in(self, priority: int) -> int:
        return self._class_inflight.get(priority, 0)

    def set_saturated(self, saturated: bool) -> None:
        """Engine saturation signal: while set, nothing new goes upstream (it queues instead)."""
        self._saturated = saturated
        if not saturated:
            self._pump()

    def set_pressured(self, pressured: bool) -> None:
        self._pressured = pressured  # engines half way to saturated: only the top class goes
        if not pressured:
            self._pump()

    def set_capacity(self, max_inflight: int) -> None:
        """A new cap (replicas came or went): larger admits now, smaller cuts nothing."""
        self.max_inflight = max(1, max_inflight)
        self._pump()

    def drain_rate(self) -> float | None:
        """Observed slot releases per second over the recent window, None before enough data."""
        now = self._clock()
        while self._releases and now - self._releases[0] > _DRAIN_WINDOW_S:
            self._releases.popleft()
        if len(self._releases) < 2:
            return None
        span = now - self._releases[0]
        return (len(self._releases) - 1) / span if span > 0 else None

    def rate_headers(self) -> list[tuple[bytes, bytes]]:
        """``x-ratelimit-*-requests`` from the admission state (limit: the in-flight cap)."""
        free = max(0, self.max_inflight - self._inflight - self.queued)
        reset = 0 if free else self.retry_after(0)
        limits = request_limits(self.max_inflight, free, reset)
        return [(k.encode(), v.encode()) for k, v in limits.items()]

    def retry_after(self, ahead: int) -> int:
        """Seconds until ``ahead`` more requests have drained at the observed rate (>= 1 s);
        before any observation, the queue's own time budget (how long the queue may take)."""
        rate = self.drain_rate()
        estimate = self.queue_timeout_s if rate is None else (ahead + 1) / rate
        return max(1, min(self.max_retry_after_s, math.ceil(estimate)))

    # -- admission ---------------------------------------------------------------------------

    def slot(
        self,
        key: str,
        on_wait: Callable[[], Awaitable[None]] | None = None,
        wait_tick_s: float = 0.0,
        sched: Sched = DEFAULT_SCHED,
    ) -> Slot:
        """``async with admission.slot(key) as ticket``: one admitted request, released on exit;
        ``on_wait`` (with ``wait_tick_s`` > 0) is awaited every tick while it queues."""
        return Slot(self, key, on_wait, wait_tick_s, sched)

    async def acquire(
        self,
        key: str,
        on_wait: Callable[[], Awaitable[None]] | None = None,
        wait_tick_s: float = 0.0,
        sched: Sched = DEFAULT_SCHED,
    ) -> Ticket:
        """Admit now, or queue until a slot frees up; raises ``Rejected`` (429)."""
        ticket = self.try_admit(key, sched)
        if ticket is not None:
            return ticket
        waiter = self.enqueue(key, sched)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout(sched)
        tick = wait_tick_s if on_wait is not None and wait_tick_s > 0 else 0.0
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0 and not waiter.future.done():
                    raise self.timed_out(waiter)
                ticket = await self.wait(waiter, max(0.0, min(remaining, tick or remaining)))
                if ticket is not None:
                    return ticket
                if tick and on_wait is not None and deadline - loop.time() > 0:
                    await on_wait()
        except BaseException:
            self.cancel(waiter)  # no-op if already out of the queue; frees a slot granted late
            raise

    def try_admit(self, key: str, sched: Sched = DEFAULT_SCHED) -> Ticket | None:
        """Admit at once if a slot is free and nobody queues; None means "queue". Raises
        ``Rejected`` when the key is over its own concurrency limit."""
        limit = sched.max_concurrency or self.per_key_limit
        if limit and self._per_key.get(key, 0) >= limit:
            raise _rejected(
                "per_key_limit",
                f"too many concurrent requests for this API key (limit {limit})",
                self.retry_after(limit - 1),
                limit,
            )
        self._shares[sched.priority] = sched.inflight_share
        self._keys.seen(key, self._clock())
        if not self._queue and self._eligible(sched.priority) and self._key_ok(key):
            return self._grant(key, self._clock(), 0.0, sched.priority)
        return None

    def enqueue(self, key: str, sched: Sched = DEFAULT_SCHED) -> Waiter:
        """Join the queue (admitted at once if the fair order says so), or raise ``Rejected``
        (queue_full) when it is full and nobody queued can be dropped for this request."""
        if len(self._queue) >= self.queue_depth:
            victim = self._queue.victim(key, sched.priority) if self.queue_depth else None
            if victim is None:
                raise _rejected(
                    "queue_full",
                    f"the server is at capacity ({self._inflight} running, {self.queued} "
                    "queued); retry after the indicated time",
                    self.retry_after(self.queued),
                    self.max_inflight,
                )
            self._evict(victim.payload)  # type: ignore[arg-type]
        self._shares[sched.priority] = sched.inflight_share
        self._keys.seen(key, self._clock())
        loop = asyncio.get_running_loop()
        waiter = Waiter(key, self._clock(), loop.create_future(), sched)
        waiter.entry = Entry(key, sched.priority, sched.weight, waiter, sched.cost)
        self._queue.push(waiter.entry)
        self._per_key[key] = self._per_key.get(key, 0) + 1
        self._pump()
        return waiter

    async def wait(self, waiter: Waiter, timeout: float | None) -> Ticket | None:
        """Wait up to ``timeout`` for a slot; None on timeout (the waiter keeps its place).
        Raises the ``Rejected`` of a waiter dropped from a full queue."""
        if not waiter.future.done():
            await asyncio.wait((waiter.future,), timeout=timeout)
        if waiter.future.done() and not waiter.future.cancelled():
            return waiter.future.result()
        return None

    def timed_out(self, waiter: Waiter) -> Rejected:
        """Leave the queue after the wait budget; returns the 429 to answer with."""
        ahead = self.position(waiter)
        self.cancel(waiter)
        return _rejected(
            "wait_timeout",
            f"request waited {self._timeout(waiter.sched):g} s in the queue without a free "
            f"slot ({waiter.sched.name} class)",
            self.retry_after(ahead),
            self.max_inflight,
        )

    def position(self, waiter: Waiter) -> int:
        """About how many queued requests go before this one."""
        return self._queue.ahead(waiter.entry) if waiter.entry is not None else 0

    def cancel(self, waiter: Waiter) -> None:
        """Give up a queued place (disconnect, timeout). A slot granted meanwhile is released."""
        if waiter.cancelled:
            return
        waiter.cancelled = True
        fut = waiter.future
        if fut.done():
            if not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            return  # granted (released now) or dropped (already out of the queue)
        fut.cancel()
        if waiter.entry is not None and self._queue.remove(waiter.entry):
            self._dec_key(waiter.key)

    def release(self, ticket: Ticket) -> None:
        """Free the slot (idempotent) and hand it to the next in the queue's order."""
        if ticket.released:
            return
        ticket.released = True
        self._inflight -= 1
        self._keys.released(ticket.key)
        self._class_inflight[ticket.priority] -= 1
        self._dec_key(ticket.key)
        self._releases.append(self._clock())
        self._queue.settle(ticket.key, ticket.priority, ticket.charged, ticket.used)
        self._pump()

    # -- internals ---------------------------------------------------------------------------

    def _timeout(self, sched: Sched) -> float:
        return sched.queue_timeout_s or self.queue_timeout_s

    def _eligible(self, priority: int) -> bool:
        """Whether a request of this class may go upstream now."""
        if self._saturated or self._inflight >= self.max_inflight:
            return False
        if not self.fair:
            return True
        if self._pressured and priority < max(self._shares):
            return False  # batch is held first, interactive last
        cap = class_share(self._shares.get(priority, 1.0), self.max_inflight)
        return not cap or self._class_inflight.get(priority, 0) < cap

    def _key_ok(self, key: str) -> bool:
        return not self.fair or self._keys.ok(key, self.max_inflight, self._clock(), self._per_key)

    def _grant(self, key: str, now: float, queued_s: float, priority: int) -> Ticket:
        self._keys.granted(key)
        self._inflight += 1
        self._class_inflight[priority] = self._class_inflight.get(priority, 0) + 1
        self._per_key[key] = self._per_key.get(key, 0) + 1
        return Ticket(key, now, queued_s, priority=priority)

    def _dec_key(self, key: str) -> None:
        if (n := self._per_key.get(key, 0) - 1) > 0:
            self._per_key[key] = n
        else:
            self._per_key.pop(key, None)

    def _evict(self, waiter: Waiter) -> None:
        assert waiter.entry is not None
        self._queue.remove(waiter.entry)
        self._dec_key(waiter.key)
        waiter.future.set_exception(
            _rejected(
                "queue_full",
                "dropped from the full queue for a request of a key (or class) with a smaller "
                "share queued; retry after the indicated time",
                self.retry_after(self.queued),
                self.max_inflight,
            )
        )

    def _pump(self) -> None:
        while self._queue and not self._saturated and self._inflight < self.max_inflight:
            entry = self._queue.pop(self._eligible, self._key_ok)
            if entry is None:
                return  # only classes at their share, or keys at theirs, wait
            waiter: Waiter = entry.payload  # type: ignore[assignment]
            self._dec_key(waiter.key)  # the queued count moves into the in-flight count
            now = self._clock()
            ticket = self._grant(waiter.key, now, now - waiter.enqueued_at, waiter.sched.priority)
            ticket.charged = entry.cost
            waiter.future.set_result(ticket)


class Slot:
    """The async context manager behind ``Admission.slot`` (a class: no generator per request)."""

    __slots__ = ("_admission", "_key", "_on_wait", "_sched", "_tick", "ticket")

    def __init__(
        self,
        admission: Admission,
        key: str,
        on_wait: Callable[[], Awaitable[None]] | None,
        wait_tick_s: float,
        sched: Sched = DEFAULT_SCHED,
    ) -> None:
        self._admission = admission
        self._key = key
        self._on_wait = on_wait
        self._tick = wait_tick_s
        self._sched = sched
        self.ticket: Ticket | None = None

    async def __aenter__(self) -> Ticket:
        self.ticket = await self._admission.acquire(
            self._key, self._on_wait, self._tick, self._sched
        )
        return self.ticket

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.ticket is not None:
            self._admission.release(self.ticket)
