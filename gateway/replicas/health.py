"""Serving state: is the engine up, and has the warm-up passed for *this* engine process?

``/health`` of the engine only says its API server answers; it says nothing about compiled
shapes, chat templates or parsers. The gateway therefore serves only when the engine answers AND
the warm-up sidecar reported "passed" for the engine instance currently running (see
``identity.py``). A restart produces a new instance, which starts again at ``warming_up``.

Pure state machine (no I/O): the engine monitor feeds observations in, the internal warm-up
endpoint feeds reports in, routes read ``snapshot()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.errors import OpenAIError, engine_down

State = Literal["engine_down", "warming_up", "warmup_failed", "ready", "draining"]
# ``draining`` is the gateway's own (SIGTERM: finishing what it has, taking nothing new); the
# other four are an engine replica's, and the gateway's is the best of its replicas'.
STATES: tuple[State, ...] = ("engine_down", "warming_up", "warmup_failed", "ready", "draining")
ReportStatus = Literal["running", "passed", "failed"]
# What a warm-up report's status makes of its instance: the one map (the sidecar's report, the
# monitor's pull of its status, another gateway's report through the shared state).
STATE_OF_REPORT: dict[ReportStatus, State] = {
    "running": "warming_up", "passed": "ready", "failed": "warmup_failed",
}  # fmt: skip


class StaleInstance(Exception):
    """A warm-up report names an engine instance that is not the one running now."""

    def __init__(self, reported: str, current: str | None) -> None:
        super().__init__(f"warm-up reported for engine instance {reported}, current is {current}")
        self.reported = reported
        self.current = current


@dataclass(frozen=True)
class Snapshot:
    state: State
    engine_instance: str | None
    step: str | None
    detail: str | None
    since: float

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def status_text(self) -> str:
        """The ``/health`` status string: ``ok`` or the reason it is not served."""
        if self.state == "ready":
            return "ok"
        if self.state == "warmup_failed":
            return f"warmup_failed: {self.step or 'unknown'}"
        return self.state

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "engine_instance": self.engine_instance,
            "step": self.step,
            "detail": self.detail,
            "since": self.since,
        }


@dataclass
class _WarmRecord:
    state: State = "warming_up"
    step: str | None = None
    detail: str | None = None


class HealthTracker:
    """Engine liveness x per-instance warm-up record -> one serving state."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._engine_up = False
        self._instance: str | None = None
        self._warm = _WarmRecord()
        self._since = clock()
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._snapshot = self._make()

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        """Call ``listener`` with each new snapshot (metrics, admission wake-ups)."""
        self._listeners.append(listener)
        listener(self._snapshot)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def instance(self) -> str | None:
        return self._instance

    def observe_engine(self, up: bool, instance: str | None = None) -> Snapshot:
        """Record what the monitor saw. A different instance resets the warm-up record."""
        if up and instance is not None and instance != self._instance:
            self._instance = instance
            self._warm = _WarmRecord()
        self._engine_up = up and self._instance is not None
        return self._update()

    def report_warmup(
        self, instance: str, status: ReportStatus, step: str | None, detail: str | None
    ) -> Snapshot:
        """Apply a warm-up sidecar report; raises ``StaleInstance`` for another instance."""
        if instance != self._instance:
            raise StaleInstance(instance, self._instance)
        self._warm = _WarmRecord(STATE_OF_REPORT[status], step, detail)
        return self._update()

    def _make(self) -> Snapshot:
        if not self._engine_up:
            return Snapshot("engine_down", self._instance, None, None, self._since)
        w = self._warm
        return Snapshot(w.state, self._instance, w.step, w.detail, self._since)

    def _update(self) -> Snapshot:
        new = self._make()
        old = self._snapshot
        if (new.state, new.engine_instance, new.step, new.detail) != (
            old.state,
            old.engine_instance,
            old.step,
            old.detail,
        ):
            self._since = self._clock()
            new = self._make()
            self._snapshot = new
            for listener in self._listeners:
                listener(new)
        return self._snapshot


def unavailable(snap: Snapshot) -> OpenAIError:
    """The 503 for a request that arrives while the engine cannot serve (and its Retry-After)."""
    if snap.state == "engine_down":
        return engine_down("the engine is not reachable; retry later")
    if snap.state == "draining":
        return OpenAIError(
            503, "the gateway is shutting down; retry (another gateway replica will answer)",
            code="draining", retry_after=2,
        )  # fmt: skip
    if snap.state == "warming_up":
        step = f" (step: {snap.step})" if snap.step else ""
        return OpenAIError(
            503, f"the engine is warming up{step}; retry later", code="warming_up", retry_after=10
        )
    return OpenAIError(
        503, f"the engine failed its warm-up at step {snap.step}; an operator must act",
        code="warmup_failed", retry_after=30,
    )  # fmt: skip
