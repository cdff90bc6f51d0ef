"""The scheduler's interfaces: the replica view (``Candidate``), ``Filter``, ``Picker``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    """What routing needs to know of a replica (``gateway.replica.Replica``)."""

    @property
    def name(self) -> str: ...
    @property
    def routable(self) -> bool: ...
    @property
    def saturated(self) -> bool: ...
    @property
    def load(self) -> float: ...
    @property
    def inflight(self) -> int: ...
    @property
    def cap(self) -> int: ...


C = TypeVar("C", bound=Candidate)


class Filter(Protocol):
    """Narrow the candidates (never to empty unless no candidate can serve at all)."""

    def filter(self, key: bytes, candidates: list[C]) -> list[C]: ...


class Picker(Protocol):
    """Choose one of a non-empty list."""

    def pick(self, key: bytes, candidates: Sequence[C]) -> C: ...


class Scheduler:
    """Filters in order, then the picker; ``exclude`` drops replicas already tried."""

    def __init__(self, filters: Sequence[Filter], picker: Picker) -> None:
        self.filters = tuple(filters)
        self.picker = picker

    def pick(self, key: bytes, replicas: Sequence[C], exclude: Sequence[C] = ()) -> C | None:
        candidates = [r for r in replicas if r not in exclude] if exclude else list(replicas)
        for f in self.filters:
            if not candidates:
                return None
            candidates = f.filter(key, candidates)
        return self.picker.pick(key, candidates) if candidates else None
