"""Filter: prefer replicas below their cap and not saturated (their engine's queue, KV cache).

Admission is global (its cap is the sum of the replicas' caps), so a request that passed it goes
upstream even when every replica is momentarily full or saturated: then this filter keeps them
all and the picker's load ranking decides. Below-cap wins over unsaturated: a replica over its
cap is certain to queue the request in the engine, a saturated one only likely.
"""

from __future__ import annotations

from gateway.routing.base import C, Request


class HasRoom:
    def filter(self, request: Request, candidates: list[C]) -> list[C]:
        below = [c for c in candidates if c.inflight < c.cap] or candidates
        return [c for c in below if not c.saturated] or below
