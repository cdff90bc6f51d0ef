"""The scheduler's interfaces: the request (``Request``), the replica view (``Candidate``),
``Filter``, ``Picker``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar


@dataclass(eq=False)
class Request:
    """The whole request as routing sees it: each plugin derives its own inputs from it (GIE's
    scorers get the request, not a key computed for one of them).

    ``kind`` and ``body`` are the parsed request (``validation.Parsed``); ``tokens`` are the
    prompt's token ids when the service asked the engine for them (``GATEWAY_ROUTING=kv``: the
    ``Scheduler.wants_tokens`` policies), else None. ``key`` is the prefix affinity key, derived
    on first use by ``prefix.affinity_key`` (or given, by tests and the routing benchmark).
    """

    kind: str = "completions"
    body: Mapping[str, Any] = field(default_factory=dict)
    tokens: Sequence[int] | None = None
    key: bytes | None = None

    @classmethod
    def keyed(cls, key: bytes) -> Request:
        """A request known only by its affinity key."""
        return cls(key=key)


class Candidate(Protocol):
    """What routing needs to know of a replica (``gateway.replicas.replica.Replica``)."""

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

    def filter(self, request: Request, candidates: list[C]) -> list[C]: ...


class Picker(Protocol):
    """Choose one of a non-empty list."""

    def pick(self, request: Request, candidates: Sequence[C]) -> C: ...


class Scheduler:
    """Filters in order, then the picker; ``exclude`` drops replicas already tried."""

    def __init__(self, filters: Sequence[Filter], picker: Picker) -> None:
        self.filters = tuple(filters)
        self.picker = picker

    @property
    def wants_tokens(self) -> bool:
        """Whether the picker scores the prompt's token ids (the service then fetches them)."""
        return bool(getattr(self.picker, "wants_tokens", False))

    def pick(self, request: Request, replicas: Sequence[C], exclude: Sequence[C] = ()) -> C | None:
        candidates = [r for r in replicas if r not in exclude] if exclude else list(replicas)
        for f in self.filters:
            if not candidates:
                return None
            candidates = f.filter(request, candidates)
        return self.picker.pick(request, candidates) if candidates else None
