"""Per-key request and token rate limits: GCRA maths, pure, with the state behind a small store.

Why GCRA (the generic cell rate algorithm, the leaky bucket as a meter): one number of state per
limit (the *theoretical arrival time*, ``tat``), exact ``Retry-After`` and ``reset`` values, and a
charge that can be adjusted afterwards, which token accounting needs: a request reserves its
prompt plus ``max_tokens`` when it is admitted and is settled from the engine's usage when it
ends (a refund moves ``tat`` back, an overrun moves it forward). A sliding-window log would keep
one entry per request per key; a fixed window lets a key spend twice its limit across a boundary.

A limit of ``L`` per ``period`` (60 s for rpm and tpm) is a bucket of ``L`` units refilled
continuously at ``L / period`` per second: a fresh key may spend all ``L`` at once, then one unit
comes back every ``period / L`` seconds (5 rpm: five requests at once, then one every 12 s).
With ``T = period / L``:

    charge c at now:  t = max(tat, now) + c*T;  allowed iff t - now <= period (then tat = t)
    retry after:      t - period - now  (when refused; never if c > L: the request is too large)
    remaining:        floor((period - (tat - now)) / T)
    reset (to full):  max(0, tat - now)

State lives behind ``LimitStore``: ``MemoryStore`` here (one gateway process);
``gateway.state.limits.RedisLimitStore`` (``GATEWAY_STATE_URL``) backs several gateways by
running the same maths server-side (a Lua script over the same ``tat`` per bucket, with the
server's clock). ``charge`` is async (a remote store answers over the network and decides);
``adjust`` is fire-and-forget (a settlement must not block, nor fail, the end of a request that
is being cancelled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PERIOD_S = 60.0  # rpm and tpm


@dataclass(frozen=True)
class Charge:
    """``cost`` units against ``bucket`` (e.g. ``alice/tokens``) limited to ``limit`` per period."""

    bucket: str
    limit: int
    cost: float
    period_s: float = PERIOD_S


@dataclass(frozen=True)
class Window:
    """One limit's state as clients see it (the ``x-ratelimit-*`` headers)."""

    limit: int
    remaining: int
    reset_s: float  # until the bucket is full again
    retry_after_s: float = 0.0  # until this charge would be allowed (0: allowed)
    too_large: bool = False  # the cost alone exceeds the limit: never allowed


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    windows: tuple[Window, ...]  # one per charge, in order

    @property
    def retry_after_s(self) -> float:
        return max((w.retry_after_s for w in self.windows), default=0.0)


def gcra(tat: float, now: float, cost: float, limit: int, period_s: float) -> tuple[float, Window]:
    """Charge ``cost`` against a bucket whose state is ``tat``: (new tat, its window).

    Refused charges leave ``tat`` unchanged (the returned tat is the old one).
    """
    t_unit = period_s / limit
    base = max(tat, now)
    new = base + cost * t_unit
    if new - now <= period_s + 1e-9:
        return new, window(new, now, limit, period_s)
    too_large = cost > limit
    retry = math.inf if too_large else new - period_s - now
    w = window(tat, now, limit, period_s)
    return tat, Window(w.limit, w.remaining, w.reset_s, retry, too_large)


def window(tat: float, now: float, limit: int, period_s: float) -> Window:
    """The bucket as it stands (nothing charged)."""
    t_unit = period_s / limit
    used = max(0.0, tat - now)
    remaining = max(0, min(limit, math.floor((period_s - used) / t_unit + 1e-9)))
    return Window(limit, remaining, used)


def adjusted(tat: float, now: float, delta: float, limit: int, period_s: float) -> float:
    """``tat`` after ``delta`` more units (negative: a refund) were used since the charge."""
    step = delta * period_s / limit
    if delta < 0:  # below ``now`` is the same as ``now``: a full bucket
        return max(now, tat + step)
    return max(tat, now) + step


class LimitStore(Protocol):
    """Where the buckets live. One process: ``MemoryStore``; several gateways: a shared store
    implementing the same two calls atomically (all charges of one call or none)."""

    async def charge(self, charges: Sequence[Charge], now: float) -> Verdict: ...

    def adjust(self, charge: Charge, delta: float, now: float) -> None: ...

    def peek(self, charge: Charge, now: float) -> Window: ...


class MemoryStore:
    """The buckets in this process: a dict of ``tat`` per bucket. Single event loop: every call
    runs to completion without awaiting, so a multi-limit charge is atomic."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    async def charge(self, charges: Sequence[Charge], now: float) -> Verdict:
        return self.charge_now(charges, now)

    def charge_now(self, charges: Sequence[Charge], now: float) -> Verdict:
        results = [
            gcra(self._tat.get(c.bucket, now), now, c.cost, c.limit, c.period_s) for c in charges
        ]
        allowed = all(w.retry_after_s == 0.0 for _, w in results)
        if allowed:
            for c, (tat, _) in zip(charges, results, strict=True):
                self._tat[c.bucket] = tat
            return Verdict(True, tuple(w for _, w in results))
        # Nothing charged. Each window is as ``gcra`` gave it: a limit that would have allowed
        # its charge alone shows the window that charge would leave, a refusing one stands as it
        # is, with its own wait (the Lua CHARGE script in gateway/state/scripts.py replies the
        # same, so the headers do not depend on where the buckets live).
        return Verdict(False, tuple(w for _, w in results))

    def adjust(self, charge: Charge, delta: float, now: float) -> None:
        if delta == 0:
            return
        tat = self._tat.get(charge.bucket, now)
        self._tat[charge.bucket] = adjusted(tat, now, delta, charge.limit, charge.period_s)

    def peek(self, charge: Charge, now: float) -> Window:
        return window(self._tat.get(charge.bucket, now), now, charge.limit, charge.period_s)

    def forget_idle(self, now: float) -> None:
        """Drop buckets that are full again (their state is the default)."""
        for bucket in [b for b, tat in self._tat.items() if tat <= now]:
            del self._tat[bucket]
