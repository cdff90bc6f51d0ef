"""Headroom between keys: one key alone may not hold every in-flight slot while others are active.

Weighted fair queuing (``fairqueue.py``) orders the *queue*, but nothing is pre-empted: if one
key's long streams hold every slot, a second key's request is first in line and still waits for
one of them to end (measured: a short request waited ~1.3 s behind a flood of 100-token streams
at cap 8, against 23 ms alone). So while another key is active (a request queued or in flight,
or one arrived in the last ``ACTIVE_S`` seconds), one key may hold at most the cap minus
``RESERVE_FRACTION`` of it (at least one slot): the reserve is free for the others, whose request
then starts at once. A key alone uses the whole cap: the reserve costs nothing to a deployment
with one client, and only that fraction of one key's concurrency while others are active.

Pure: time is passed in; ``Admission`` calls it on every grant, release and queue pump.
"""

from __future__ import annotations

import math
from collections.abc import Container

RESERVE_FRACTION = 0.125
ACTIVE_S = 10.0


class KeyShares:
    def __init__(self, reserve_fraction: float = RESERVE_FRACTION, active_s: float = ACTIVE_S):
        self.reserve_fraction = reserve_fraction
        self.active_s = active_s
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

    def ok(self, key: str, cap: int, now: float, busy: Container[str]) -> bool:
        """Whether ``key`` may take one more of ``cap`` slots; ``busy``: keys with requests
        queued or in flight."""
        if cap < 2 or self.reserve_fraction <= 0:
            return True
        limit = cap - max(1, math.ceil(cap * self.reserve_fraction))
        if self.inflight.get(key, 0) < limit:
            return True
        horizon = now - self.active_s
        for other, at in list(self.last_seen.items()):
            if other == key:
                continue
            if other in busy or at >= horizon:
                return False  # another key is active: keep the reserve free for it
            del self.last_seen[other]  # idle for a while: forget it
        return True
