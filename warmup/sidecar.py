"""The sidecar's life cycle: wait, warm, report, hand over to the gateway; optionally watch.

One warm-up (``warm_once``) is: wait for the engine, read its instance identity, post
``running``, run the plan, check the instance did not change underneath, write the report, post
``passed``/``failed`` for that instance, and on success write the compile cache back.

Engine restarts (the approach chosen for compose, see warmup/README.md): the sidecar runs with
``--watch`` and keeps polling the engine's instance identity every ``WARMUP_WATCH_INTERVAL_S``;
a new instance (or the engine coming back after being down) triggers a new warm-up. Until that
one passes, the gateway already answers 503 on its own, because it resets its state when it
sees the new instance. ``make warmup`` runs once; if the engine restarts *during* that run, the
run warms the new instance instead (up to ``MAX_ATTEMPTS`` times).

One ``Sidecar`` warms one engine replica (``url``); ``warmup.fleet`` runs one per replica and
shares a ``slot`` semaphore between them so that only a bounded number of plans run at once.
Waiting for an engine never holds the slot (a replica that is down must not block the others).
``warm`` records what the sidecar is doing for the status server (``warmup/status.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from rich.console import Console

from env.settings import EngineEnv, EngineSettings, GatewaySettings, WarmupSettings
from protocol.handshake import DETAIL_MAX
from warmup.engine import EngineInfo, current_instance, describe
from warmup.notify import GatewayStale, GatewayUnavailable, HandshakeClient, cache_save, gateway_url
from warmup.plan import Plan, build_plan
from warmup.progress import Reporter
from warmup.report import build_report, print_summary, write_report
from warmup.runner import EngineLost, Runner, StepFailed
from warmup.status import WarmState
from warmup.wait import EngineNotReady, wait_ready

Status = Literal["passed", "failed", "engine_lost", "not_ready", "gateway_error"]
EXIT_CODES: dict[str, int] = {
    "passed": 0,
    "failed": 1,
    "not_ready": 2,
    "engine_lost": 2,
    "gateway_error": 3,
}
MAX_ATTEMPTS = 3  # one-shot mode: warm at most this many successive engine instances
RUNNING_POST_TIMEOUT_S = 5.0  # "running" is informative: never hold the warm-up up for it


def entry_for(doc: dict[str, Any], instance: str) -> dict[str, Any] | None:
    """The gateway's warm-up record of ``instance`` in a GET /internal/warmup answer.

    One upstream: the document itself (``{"state", "engine_instance", ...}``). Several: a
    ``replicas`` list of such records, matched by instance as the gateway matches the POSTs.
    """
    records = doc.get("replicas")
    candidates = records if isinstance(records, list) else [doc]
    for record in candidates:
        if isinstance(record, dict) and record.get("engine_instance") == instance:
            return record
    return None


@dataclass
class Outcome:
    """How one warm-up ended, and for which engine instance.

    ``result`` is what the plan proved (passed/failed); ``status`` adds what happened around it
    (engine lost, gateway unreachable) and decides the exit code; ``posted`` is the result the
    gateway accepted for ``instance``, if any.
    """

    status: Status
    instance: str | None = None
    step: str | None = None
    message: str | None = None
    result: str | None = None
    posted: str | None = None
    gateway_error: str | None = None
    report: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


@dataclass
class Sidecar:
    """Everything one warm-up process needs: settings, the gateway client, output."""

    profile: str
    engine: EngineSettings
    engine_env: EngineEnv
    warmup: WarmupSettings
    reporter: Reporter
    gateway: HandshakeClient | None
    report_path: Path
    console: Console = field(default_factory=Console)
    url: str = ""  # this replica's engine; empty: WARMUP_ENGINE_URL, else the engine's own URL
    name: str = ""  # the replica's name (host:port) when the sidecar warms several, else empty
    replica_index: int | None = None  # a replica of this host: the cache save names it
    slot: asyncio.Semaphore | None = None  # shared by the replicas: bounds concurrent plans
    warm: WarmState = field(default_factory=WarmState)
    # The compile-cache write-back, (profile, replica index) -> (ok, message); run in a thread.
    # A field so that tests can hand in a save that succeeds or fails without a real cache.
    save_cache: Callable[[str, int | None], tuple[bool, str]] = cache_save

    @classmethod
    def load(
        cls, profile: str, reporter: Reporter, report_path: Path | None = None, notify: bool = True
    ) -> Sidecar:
        warmup = WarmupSettings.load(profile)
        gateway = None
        if notify:
            gw = GatewaySettings.load(profile)
            gateway = HandshakeClient(
                gateway_url(warmup, gw), gw.internal_token_file, warmup.gateway_timeout_s
            )
        return cls(
            profile=profile,
            engine=EngineSettings.load(profile),
            engine_env=EngineEnv.load(profile),
            warmup=warmup,
            reporter=reporter,
            gateway=gateway,
            report_path=report_path or warmup.report_path,
        )

    @property
    def engine_url(self) -> str:
        return (self.url or self.warmup.engine_url or self.engine.url).rstrip("/")

    def plan(self) -> Plan:
        return build_plan(self.engine, self.engine_env, self.warmup)

    def client(self, plan: Plan | None = None) -> httpx.AsyncClient:
        """One pooled client, large enough for the widest concurrency step."""
        widest = max((s.concurrency for s in plan.steps), default=1) if plan else 1
        return httpx.AsyncClient(
            base_url=self.engine_url,
            timeout=httpx.Timeout(self.warmup.request_timeout_s, connect=10),
            limits=httpx.Limits(max_connections=widest + 8, max_keepalive_connections=widest + 8),
        )

    # -- one warm-up ------------------------------------------------------------------------

    async def warm_once(self) -> Outcome:
        self.warm.set("waiting")
        outcome = await self._warm_once()
        self._record(outcome)
        return outcome

    def _record(self, outcome: Outcome) -> None:
        """What the status server says about this replica after a warm-up."""
        if outcome.status != "engine_lost" and outcome.instance and outcome.result == "passed":
            self.warm.set("passed", outcome.instance)
        elif outcome.status != "engine_lost" and outcome.instance and outcome.result == "failed":
            self.warm.set("failed", outcome.instance, outcome.step, outcome.message)
        else:
            self.warm.set("waiting")

    async def _warm_once(self) -> Outcome:
        plan = self.plan()
        async with self.client(plan) as client:
            try:
                model = await wait_ready(
                    client, self.engine_env.vllm_engine_ready_timeout_s, self.reporter
                )
            except EngineNotReady as exc:
                self.reporter.log(str(exc))
                return Outcome("not_ready", message=str(exc))
            if self.slot is not None and self.slot.locked():
                self.reporter.log("engine ready; waiting for another replica's warm-up to end")
            async with self.slot or contextlib.nullcontext():
                return await self._warm_ready(client, plan, model)

    async def _warm_ready(self, client: httpx.AsyncClient, plan: Plan, model: str) -> Outcome:
        """The engine answered ready: read its identity and run the plan (holding the slot)."""
        try:
            info = await describe(client)
        except httpx.HTTPError as exc:
            return Outcome("engine_lost", message=f"engine went away: {exc}")
        started = time.time()
        runner = Runner(client, model, self.warmup, self.reporter, salt=random.getrandbits(32))
        if info.instance is None:
            msg = "engine /metrics has no process_start_time_seconds: no instance identity"
            outcome = Outcome("failed", None, "identity", msg, result="failed")
            return await self._finish(client, plan, info, runner, started, outcome)
        self.reporter.log(
            f"engine {self.engine_url} instance {info.instance}, model {model}, "
            f"vLLM {info.version}: {len(plan.steps)} steps"
        )
        self.warm.set("running", info.instance)
        await self._post_running(info.instance)
        try:
            await runner.run(plan)
            outcome = Outcome("passed", info.instance, result="passed")
            if await current_instance(client) != info.instance:
                outcome = Outcome("engine_lost", info.instance, None, "engine restarted")
        except StepFailed as exc:
            outcome = Outcome("failed", info.instance, exc.step, str(exc), result="failed")
        except EngineLost as exc:
            outcome = Outcome("engine_lost", info.instance, exc.step, str(exc))
        except httpx.HTTPError as exc:
            outcome = Outcome("engine_lost", info.instance, None, f"engine went away: {exc}")
        return await self._finish(client, plan, info, runner, started, outcome)

    async def _finish(
        self,
        client: httpx.AsyncClient,
        plan: Plan,
        info: EngineInfo,
        runner: Runner,
        started: float,
        outcome: Outcome,
    ) -> Outcome:
        """Hand the result to the gateway, write the report, write the cache back on success."""
        if outcome.result is not None and outcome.instance is not None:
            await self._post_final(client, outcome, self.warmup.gateway_timeout_s)
        w = self.warmup
        outcome.report = build_report(
            profile=self.profile,
            plan=plan,
            results=runner.results,
            engine=info,
            started_at=started,
            outcome=outcome.status,
            failed_step=outcome.step,
            error=outcome.message,
            thresholds={"stall_ratio": w.stall_ratio, "stall_min_s": w.stall_min_s},
        )
        outcome.report["result"] = outcome.result
        if self.name:
            outcome.report["replica"] = self.name
        outcome.report["gateway"] = {
            "url": self.gateway.url if self.gateway else None,
            "posted": outcome.posted,
            "error": outcome.gateway_error,
        }
        write_report(outcome.report, self.report_path)
        print_summary(outcome.report, self.console)
        self.reporter.log(f"report written to {self.report_path}")
        if outcome.status == "passed" and w.cache_save:
            ok, msg = await asyncio.to_thread(self.save_cache, self.profile, self.replica_index)
            # ``msg`` is the save's own account ("...: saved N bytes to P" or "nothing saved").
            # A failed save means every later cold start compiles from scratch (10-30+ min on
            # TPU): it goes into the report an operator and the ops server read, and into the
            # status server's /metrics (ops/prometheus/rules.yml alerts on it), not only a log.
            outcome.report["cache_save"] = {"ok": ok, "message": msg}
            self.warm.saved(ok)
            write_report(outcome.report, self.report_path)
            self.reporter.log(msg if ok else f"ERROR: compile cache NOT saved: {msg}")
        return outcome

    # -- handshake ----------------------------------------------------------------------------

    async def _post_running(self, instance: str) -> None:
        if self.gateway is None:
            return
        try:
            await self.gateway.report(instance, "running", timeout_s=RUNNING_POST_TIMEOUT_S)
        except (GatewayStale, GatewayUnavailable) as exc:
            self.reporter.log(f"note: could not post 'running' to the gateway ({exc})")

    async def _post_final(
        self, client: httpx.AsyncClient, outcome: Outcome, timeout_s: float
    ) -> None:
        """POST the result. On 409 decide: engine restarted (-> engine_lost) or gateway lag.

        Updates ``outcome.status`` / ``posted`` in place.
        """
        if self.gateway is None or outcome.result is None or outcome.instance is None:
            return
        detail = (outcome.message or "")[:DETAIL_MAX] or None  # the contract's own bound
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.gateway.report(
                    outcome.instance, outcome.result, outcome.step, detail, timeout_s=timeout_s
                )
                outcome.posted, outcome.gateway_error = outcome.result, None
                outcome.status = outcome.result  # type: ignore[assignment]
                self.reporter.log(f"gateway told: {outcome.result} for instance {outcome.instance}")
                return
            except GatewayUnavailable as exc:
                outcome.status, outcome.gateway_error = "gateway_error", str(exc)
                return
            except GatewayStale:
                try:
                    now = await current_instance(client)
                except httpx.HTTPError:
                    now = None
                if now != outcome.instance:
                    outcome.status = "engine_lost"
                    outcome.message = "engine restarted before the result could be posted"
                    return
                if time.monotonic() >= deadline:  # the gateway never saw this instance
                    outcome.status = "gateway_error"
                    outcome.gateway_error = f"gateway {self.gateway.url} does not see {now}"
                    return
                await asyncio.sleep(1.0)

    # -- modes ----------------------------------------------------------------------------------

    async def run_once(self) -> Outcome:
        """``make warmup``: one warm-up; a restart mid-way moves on to the new instance."""
        outcome = Outcome("not_ready")
        for _ in range(MAX_ATTEMPTS):
            outcome = await self.warm_once()
            if outcome.status != "engine_lost":
                return outcome
            self.reporter.log(f"{outcome.message}: warming the new engine instance")
        return outcome

    async def watch(self) -> None:
        """Compose sidecar: warm every new engine instance, forever."""
        while True:
            outcome = await self.warm_once()
            if outcome.status in ("not_ready", "engine_lost"):
                continue
            await self._monitor(outcome)

    async def _monitor(self, outcome: Outcome) -> None:
        """Return when the engine instance changes or the engine goes down.

        Meanwhile keep the gateway's record right: a restarted gateway forgets the result (it
        starts at warming_up) and a failed post is retried, without re-running the plan.
        """
        interval = self.warmup.watch_interval_s
        async with self.client() as client:
            while True:
                await asyncio.sleep(interval)
                try:
                    now = await current_instance(client)
                except httpx.HTTPError:
                    self.reporter.log("engine down: waiting for it to come back")
                    return
                if now != outcome.instance:
                    self.reporter.log(f"engine instance changed ({outcome.instance} -> {now})")
                    return
                if self.gateway is not None:
                    await self._resync(client, outcome)

    async def _resync(self, client: httpx.AsyncClient, outcome: Outcome) -> None:
        """Re-post a result the gateway does not have (post failed, or the gateway restarted)."""
        assert self.gateway is not None
        if outcome.result is None or outcome.instance is None:
            return
        timeout = max(2.0, self.warmup.watch_interval_s)
        if outcome.posted == outcome.result:
            try:
                state = await self.gateway.state(timeout_s=timeout)
            except (GatewayStale, GatewayUnavailable):
                return
            mine = entry_for(state, outcome.instance)
            if mine is None:
                return  # the gateway has not caught up with this instance yet
            if mine.get("state") != "warming_up":
                return
            self.reporter.log(f"gateway lost the result for {outcome.instance}: re-posting")
        await self._post_final(client, outcome, timeout)
