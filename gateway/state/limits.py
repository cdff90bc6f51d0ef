"""``RedisLimitStore``: the rate limits (``ratelimit.LimitStore``) in Redis for the whole fleet.

Why: with the buckets in each process, N gateways let a key spend N times its rpm and tpm. Here a
charge (rpm and tpm of one request together, all or nothing) is one Lua script on the shared
store with the server's clock: one round trip, the same GCRA as ``MemoryStore``. A settlement
(``adjust``) goes out through the store's outbox (it never blocks the end of a request).

``peek`` (the ``x-ratelimit-*`` headers of an answer that charged nothing) must not wait on the
network: it reads the bucket as this gateway last saw it (the ``tat`` of its last charge, moved
onto the local clock), which is exact for the key's own recent traffic through this gateway and
an estimate otherwise.

While the store is unavailable (``Link``): ``local`` charges a ``MemoryStore`` with this
gateway's share of each limit; ``closed`` raises the 503.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from gateway.state.link import share
from gateway.state.scripts import ADJUST, CHARGE
from gateway.state.store import PREFIX, SharedState, StateDown
from gateway.tenancy.ratelimit import Charge, MemoryStore, Verdict, Window, window

BUCKETS = PREFIX + "rl:"


class RedisLimitStore:
    def __init__(
        self,
        state: SharedState,
        server_clock: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        # False (tests): the ``now`` passed in is the scripts' clock too (deterministic maths).
        self.server_clock = server_clock
        self._clock = clock
        self.local = MemoryStore()
        self._seen: dict[str, float] = {}  # bucket -> tat on the local clock (for ``peek``)

    def _now_arg(self, now: float) -> str:
        return "" if self.server_clock else repr(now)

    async def charge(self, charges: Sequence[Charge], now: float) -> Verdict:
        if not charges:
            return Verdict(True, ())
        try:
            reply = await self.state.script(
                CHARGE, [BUCKETS + c.bucket for c in charges],
                [self._now_arg(now), *(x for c in charges for x in (c.limit, c.cost, c.period_s))],
            )  # fmt: skip
        except StateDown:
            self.state.local_or_refuse()
            return self.local.charge_now([self._share(c) for c in charges], now)
        return self._verdict(reply, charges)

    def _verdict(self, reply: list[object], charges: Sequence[Charge]) -> Verdict:
        allowed = int(reply[0]) == 1  # type: ignore[call-overload]
        server_now = float(reply[1])  # type: ignore[arg-type]
        local_now = self._clock()
        windows = []
        for i, c in enumerate(charges):
            tat, remaining, reset, retry, too_large = reply[2 + 5 * i : 7 + 5 * i]
            self._seen[c.bucket] = local_now + float(tat) - server_now  # type: ignore[arg-type]
            windows.append(
                Window(
                    c.limit, int(remaining), float(reset),  # type: ignore[call-overload,arg-type]
                    math.inf if retry == "inf" else float(retry),  # type: ignore[arg-type]
                    int(too_large) == 1,  # type: ignore[call-overload]
                )
            )  # fmt: skip
        return Verdict(allowed, tuple(windows))

    def adjust(self, charge: Charge, delta: float, now: float) -> None:
        if delta == 0:
            return
        if self.state.fallback:
            self.local.adjust(self._share(charge), delta, now)
            return
        seen = self._seen.get(charge.bucket)
        if seen is not None:
            step = delta * charge.period_s / charge.limit
            self._seen[charge.bucket] = (
                max(self._clock(), seen + step) if delta < 0 else seen + step
            )
        self.state.send((
            ADJUST, [BUCKETS + charge.bucket],
            [self._now_arg(now), delta, charge.limit, charge.period_s],
        ))  # fmt: skip

    def peek(self, charge: Charge, now: float) -> Window:
        if self.state.fallback:
            return self.local.peek(self._share(charge), now)
        tat = self._seen.get(charge.bucket)
        local = self._clock()
        return window(local if tat is None else tat, local, charge.limit, charge.period_s)

    def _share(self, c: Charge) -> Charge:
        return Charge(c.bucket, share(c.limit, self.state.gateways), c.cost, c.period_s)
