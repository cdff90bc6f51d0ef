"""Background polling of one engine: ``/metrics`` for saturation and identity, ``/health``.

Two loops because the two signals have different cadences: saturation must be fresh (sub-second,
or admissions stall on stale data), liveness once a second is enough; a proxy that sees the
upstream fail calls ``poke()`` to re-check liveness at once, so ``/health`` turns 503 within a
poll interval of an engine crash rather than a timeout later.

Feeds the replica's ``HealthTracker`` (engine up + instance) and its ``saturated`` flag, and calls
``on_change`` when either moved (the replica set then recomputes admission's cap and saturation).
One monitor per replica. Polls go through the token path's ``EnginePool`` (five a second:
through httpx they were ~15% of the gateway's CPU at 256 streams).

With ``warm_status`` (``GATEWAY_WARMUP_STATUS_PORT``), the health loop also asks the replica's
warm-up sidecar for its ``/ready`` state and applies it as a report for the instance it names:
how a gateway that no sidecar pushes to (one of several gateway pods) learns warm-up results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import httpx

from gateway.replicas.health import STATE_OF_REPORT, HealthTracker, StaleInstance
from gateway.replicas.saturation import EngineSample, SaturationPolicy, parse_engine_metrics

log = logging.getLogger("gateway.monitor")
SLOW_HEALTH_POLLS = 3  # consecutive late /health answers before the engine counts as down


class EngineCalls(Protocol):
    """What the monitor needs of a client (``gateway.upstream.wire.EnginePool``); raises httpx
    errors."""

    async def call(self, method: str, path: str, timeout: float) -> tuple[int, bytes]: ...


class WarmStatus(Protocol):
    """The replica's warm-up sidecar state (``GET /ready``): JSON with ``state`` and
    ``engine_instance``, or None when it cannot be read."""

    async def __call__(self) -> dict[str, object] | None: ...


class EngineMonitor:
    def __init__(
        self,
        engine: EngineCalls,
        health: HealthTracker,
        policy: SaturationPolicy,
        metrics_poll_s: float,
        health_poll_s: float,
        on_change: Callable[[], None] = lambda: None,
        warm_status: WarmStatus | None = None,
    ) -> None:
        self.engine = engine
        self.health = health
        self.on_change = on_change
        self.warm_status = warm_status
        self.saturated = True  # until a fresh sample says otherwise
        self.pressured = True  # half way to saturated: lower priority classes are held
        self.policy = policy
        self.metrics_poll_s = metrics_poll_s
        self.health_poll_s = health_poll_s
        self.sample: EngineSample | None = None
        self.saturation_reason: str | None = "no_metrics"
        self._health_ok = False
        self._late_polls = 0
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._metrics_loop(), name="engine-metrics"),
            asyncio.create_task(self._health_loop(), name="engine-health"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def poke(self) -> None:
        """Something looked wrong upstream: check liveness now instead of at the next tick."""
        self._poke.set()

    def metrics_age(self) -> float:
        return time.monotonic() - self.sample.at if self.sample else float("inf")

    async def poll_metrics(self) -> None:
        """Refresh the saturation sample (and the instance). A failure is not "down" by itself:
        a slow ``/metrics`` under load only makes the sample stale (saturated); a refused
        connection asks the health loop to confirm at once."""
        try:
            status, body = await self.engine.call("GET", "/metrics", self.policy.max_age_s)
            if status == 200:
                text = body.decode(errors="replace")
                self.sample = parse_engine_metrics(text, time.monotonic())
                self._publish()  # a first sample, a restart between polls, or back after down
        except httpx.ConnectError:
            self.poke()
        except httpx.HTTPError:
            pass
        self._evaluate()

    async def poll_health(self) -> None:
        """A refused connection or a non-200 is "down" at once; an answer that is only late is
        down after ``SLOW_HEALTH_POLLS`` in a row (a starved or busy engine is slow, not dead:
        turning every request into a 503 for one late poll would be the outage)."""
        try:
            status, _ = await self.engine.call("GET", "/health", max(1.0, 2 * self.health_poll_s))
            self._health_ok = status == 200
            self._late_polls = 0
        except httpx.ConnectError:
            self._health_ok = False
            self._late_polls = 0
        except httpx.HTTPError:
            self._late_polls += 1
            self._health_ok = self._health_ok and self._late_polls < SLOW_HEALTH_POLLS
        if not self._health_ok:
            # Forget the instance: when the engine answers again it may be a new process, and
            # it must not be served under the old one's warm-up until /metrics says which it is.
            self.sample = None
        self._publish()
        if self.warm_status is not None and self._up:
            await self.pull_warm_status()

    async def pull_warm_status(self) -> None:
        """Apply the sidecar's view of the warm-up to the instance it names (if current)."""
        assert self.warm_status is not None
        state = await self.warm_status()
        if not state:
            return
        status = str(state.get("state"))  # JSON: any type; only the three names count
        instance = state.get("engine_instance")
        if status not in STATE_OF_REPORT or not isinstance(instance, str):
            return
        snap = self.health.snapshot()
        wanted = STATE_OF_REPORT[status]
        if snap.engine_instance == instance and snap.state == wanted:
            return
        step = state.get("step")
        detail = state.get("detail")
        try:
            self.health.report_warmup(
                instance,
                status,  # type: ignore[arg-type]
                step if isinstance(step, str) else None,
                detail if isinstance(detail, str) else None,
            )
        except StaleInstance:
            return  # the sidecar speaks of another process than the one we see: wait
        self.on_change()

    def mark_down(self) -> None:
        """The proxy saw this replica refuse or fail before answering: stop routing to it now
        and let the health loop decide when it is back."""
        self._health_ok = False
        self._late_polls = 0
        self.sample = None
        self._publish()
        self.poke()

    @property
    def _up(self) -> bool:
        return self._health_ok and self.sample is not None

    def _publish(self) -> None:
        before = self.health.snapshot()
        after = self.health.observe_engine(self._up, self.sample.instance if self.sample else None)
        if after is not before:
            self.on_change()

    def _evaluate(self) -> None:
        now = time.monotonic()
        self.saturation_reason = self.policy.reason(self.sample, now)
        saturated = self.saturation_reason is not None
        pressured = self.policy.pressured(self.sample, now)
        if (saturated, pressured) != (self.saturated, self.pressured):
            self.saturated, self.pressured = saturated, pressured
            self.on_change()

    async def _metrics_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll_metrics()
            except Exception:  # never let the monitor die: fail closed instead
                log.exception("metrics poll failed")
                self._evaluate()
            await asyncio.sleep(max(0.0, self.metrics_poll_s - (time.monotonic() - started)))

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.poll_health()
            except Exception:
                log.exception("health poll failed")
            self._poke.clear()
            with contextlib.suppress(TimeoutError):  # asyncio.timeout keeps a cancel (wire.py)
                async with asyncio.timeout(self.health_poll_s):
                    await self._poke.wait()
