"""Picker: the replica with the least outstanding work (``Candidate.load``).

Ties (an idle stack, sequential clients) go to the replica picked longest ago, so requests
alternate instead of all landing on the first replica. Not to the one sent the fewest requests
so far: a replica that was down for a while would then take every request until it caught up.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.routing.base import C, Request


class LeastLoaded:
    def __init__(self) -> None:
        self._seq = 0
        self._picked: dict[str, int] = {}  # name -> when it was last picked

    def pick(self, request: Request, candidates: Sequence[C]) -> C:
        chosen = min(candidates, key=lambda c: (c.load, self._picked.get(c.name, 0), c.name))
        self._seq += 1
        self._picked[chosen.name] = self._seq
        if len(self._picked) > 4 * len(candidates) + 64:  # replicas that left (DNS)
            keep = {c.name for c in candidates}
            self._picked = {n: s for n, s in self._picked.items() if n in keep}
        return chosen
