"""Headroom between keys: one key alone may not hold every in-flight slot while others are active.

Weighted fair queuing (``fairqueue.py``) orders the *queue*, but nothing is pre-empted: if one
key's long streams hold every slot, a second key's request is first in line and still waits for
one of them to end (measured: a short request waited ~1.3 s behind a flood of 100-token streams
at cap 8, against 23 ms alone). So while another key is active (a request queued or in flight,
or one arrived in the last ``ACTIVE_S`` seconds), one key may hold at most the cap minus
``RESERVE_FRACTION`` of it (at least one slot): the reserve is free for the others, whose request
then starts at once.

A key alone keeps one slot free while other keys could come (``tenants() > 1``: the keys file
names more than one tenant): without it, the *first* request of a key that was idle waited for a
flood stream to end (measured: p99 1.1 s at cap 8, all of it that first request), because the
reserve above is only held once the other key is active. An open gateway, or one with a single
tenant, uses the whole cap: the reserve costs nothing to a deployment with one client, one slot
while one of several tenants is busy alone, and the fraction while others are active.

Pure: time is passed in; ``Admission`` calls it on every grant, release and queue pump.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container

RESERVE_FRACTION = 0.125
ACTIVE_S = 10.0


def _one() -> int:
    return 1


class KeyShares:
    def __init__(
        self,
        reserve_fraction: float = RESERVE_FRACTION,
        active_s: float = ACTIVE_S,
        tenants: Callable[[], int] = _one,
    ) -> None:
        self.reserve_fraction = reserve_fraction
        self.active_s = active_s
        self.tenants = tenants  # how many keys could come (the keys file's tenants, live)
        self.inflight: dict[str, int] = {}
        self.last_seen: dict[str, float] = {}

    def seen(self, key: str, now: float) -> None:
        self.last_seen[key] = now

    def granted(self, key: str) -> None:
        self.inflight[key] = self.inflight.get(key, 0) + 1

    def released(self, key: str) -> None:
        left = self.inflight.get(key, 0) - 1
        if left > 0:
            self.inflight[key] = left
        else:
            self.inflight.pop(key, None)

    def reserve(self, cap: int) -> int:
        """The slots of ``cap`` one key leaves to the others while they are active (0: none)."""
        if cap < 2 or self.reserve_fraction <= 0:
            return 0
        return max(1, math.ceil(cap * self.reserve_fraction))

    def reserves(self, cap: int) -> tuple[int, int]:
        """(the reserve while other keys are active, the one while a key is alone): the same
        rule for the fleet's leases (``gateway.state.leases``, counted in Redis)."""
        active = self.reserve(cap)
        return active, (1 if active and self.tenants() >= 2 else 0)

    def ok(self, key: str, cap: int, now: float, busy: Container[str]) -> bool:
        """Whether ``key`` may take one more of ``cap`` slots; ``busy``: keys with requests
        queued or in flight."""
        reserve = self.reserve(cap)
        if not reserve:
            return True
        held = self.inflight.get(key, 0)
        if held < cap - reserve:
            return True
        horizon = now - self.active_s
        for other, at in list(self.last_seen.items()):
            if other == key:
                continue
            if other in busy or at >= horizon:
                return False  # another key is active: keep the reserve free for it
            del self.last_seen[other]  # idle for a while: forget it
        return held < cap - 1 or self.tenants() < 2  # alone: a slot for the next key's first
