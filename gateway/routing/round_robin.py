"""Picker: each replica in turn (the baseline the other policies are measured against)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.routing.base import C, Request


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def pick(self, request: Request, candidates: Sequence[C]) -> C:
        self._next += 1
        return candidates[self._next % len(candidates)]
