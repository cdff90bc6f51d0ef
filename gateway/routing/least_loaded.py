"""Picker: the replica with the least outstanding work (``Candidate.load``); ties by name, so the
choice is deterministic for tests and spreads in order when all are idle (then the one with the
fewest requests so far would be better: ``load`` already counts this gateway's in-flight)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.routing.base import C


class LeastLoaded:
    def pick(self, key: bytes, candidates: Sequence[C]) -> C:
        return min(candidates, key=lambda c: (c.load, c.name))
