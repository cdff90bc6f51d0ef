"""``FleetAdmission``: the admission of one process, then the fleet's (``GATEWAY_STATE_URL``).

Why a subclass rather than a hook in ``gateway.admission.core``: that module is the one-process
admission (cap, queue, fair order, headroom), unchanged and on the request path's size budget;
with shared state a slot is granted here first (this process's queue and fair order as
always), then one lease from ``SharedSlots`` (the key's concurrency and the in-flight cap across
every gateway, freed slots going to the fleet's waiters in the fair queue's order: the request's
class, weight and cost travel with it), within what is left of the request's queue wait.
Released in reverse order on every exit path.

While a request waits at the fleet's door its local slot is lent to the next local request
(``lend``: at most the queue depth of them at once, so the door's waiters stay bounded). Kept,
the slot made the two queues one behind the other: with a flood coming through every gateway,
a gateway's slots were all held by its share of the flood, half of it waiting at the door, and
another key's request waited for one of those before it could even take its place in the
fleet's order (twice the wait measured through one gateway: gateway/README.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from gateway.admission.core import Admission, Slot, Ticket
from gateway.admission.fairqueue import DEFAULT_SCHED, Sched, class_share

OnWait = Callable[[], Awaitable[None]] | None


class SharedSlots(Protocol):
    """The fleet's slots (``gateway.state.leases.Leases``): raises the 429 (or a 503)."""

    async def acquire(
        self, key: str, limit: int, cap: int, on_wait: OnWait, tick_s: float, timeout_s: float,
        reserves: tuple[int, int], order: tuple[int, float, float], class_cap: int,
    ) -> Any: ...  # fmt: skip

    def release(self, lease: Any, used: float | None) -> None: ...


class FleetAdmission(Admission):
    def __init__(self, *args: Any, shared: SharedSlots, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared = shared
        self.leasing = 0  # local slots granted, their fleet lease not yet
        self.lent = 0  # of those, the slots lent to the next local request meanwhile

    def gauges(self) -> tuple[int, int]:
        """The slots still waiting for their lease are waiting, not upstream: with two gateways
        on a cap of 2, a third request holds a local slot while it waits, and the fleet's
        ``gateway_inflight`` would sum to 3."""
        return self.inflight - self.leasing + self.lent, self.queued + self.leasing

    def lend(self) -> bool:
        """Lend a slot waiting for its lease to the next local request (False: not lent, the
        door already has the queue depth's worth of this gateway's waiters)."""
        if self.lent >= self.queue_depth:
            return False
        self.lent += 1
        self._inflight -= 1
        self._pump()
        return True

    def take_back(self) -> None:
        """The lent slot is its request's again (leased, or leaving): the local count may pass
        the cap for a moment; the fleet's lease is what bounds the requests upstream."""
        self.lent -= 1
        self._inflight += 1

    def slot(
        self,
        key: str,
        on_wait: OnWait = None,
        wait_tick_s: float = 0.0,
        sched: Sched = DEFAULT_SCHED,
    ) -> Slot:
        return FleetSlot(self, key, on_wait, wait_tick_s, sched)


class FleetSlot(Slot):
    __slots__ = ("_lease",)

    async def __aenter__(self) -> Ticket:
        ticket = await super().__aenter__()
        adm: FleetAdmission = self._admission  # type: ignore[assignment]
        sched = self._sched
        left = max(0.0, adm._timeout(sched) - ticket.queued_s)
        adm.leasing += 1
        lent = adm.lend()
        try:
            cap = adm.max_inflight
            self._lease = await adm.shared.acquire(
                self._key, sched.max_concurrency or adm.per_key_limit, cap,
                self._on_wait, self._tick, left,
                adm._keys.reserves(cap) if adm.fair else (0, 0),
                (sched.priority, sched.weight, sched.cost) if adm.fair else (0, 1.0, sched.cost),
                class_share(sched.inflight_share, cap) if adm.fair else 0,
            )  # fmt: skip
        except BaseException:
            if lent:
                adm.take_back()
            adm.release(ticket)
            raise
        finally:
            adm.leasing -= 1
        if lent:
            adm.take_back()
        return ticket

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = getattr(self, "_lease", None)
        if lease is not None:
            used = self.ticket.used if self.ticket is not None else None
            self._admission.shared.release(lease, used)  # type: ignore[attr-defined]
        await super().__aexit__(exc_type, exc, tb)
