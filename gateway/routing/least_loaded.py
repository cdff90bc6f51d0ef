"""Picker: the replica with the least outstanding work (``Candidate.load``).

Ties (an idle stack, sequential clients) go to the replica that was sent the fewest requests,
then by name: requests alternate instead of all landing on the first replica, and the choice
is deterministic for the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.routing.base import C


class LeastLoaded:
    def pick(self, key: bytes, candidates: Sequence[C]) -> C:
        return min(candidates, key=lambda c: (c.load, c.served, c.name))
