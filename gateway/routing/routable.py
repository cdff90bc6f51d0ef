"""Filter: only replicas that are up, warmed for their current engine instance, not draining."""

from __future__ import annotations

from gateway.routing.base import C, Request


class Routable:
    def filter(self, request: Request, candidates: list[C]) -> list[C]:
        return [c for c in candidates if c.routable]
