"""Warm every replica: one ``Sidecar`` per engine, separately reported, bounded concurrency.

Which replicas: ``WARMUP_ENGINE_URL`` when set (one URL, or a comma list), else
``env.replicas.static_upstreams``, the answer the gateway and compose use
(``GATEWAY_UPSTREAM_URLS``, ``GATEWAY_UPSTREAM_URL``, else ``ENGINE_REPLICAS`` engines on
``ENGINE_PORT + i``). A single engine is warmed exactly as before: same URL, same report path,
same log lines without a replica tag.

Concurrency: plans run **one at a time** by default (``--parallel N`` raises it). Each replica's
warm-up is reported to the gateway for its own instance either way, so the order does not
matter to correctness; it matters to cost and to the measurements. On CPU two warm-ups in
parallel share the same cores and starve each other (and the engines). On one TPU host the
replicas own separate chips and compile independently, but XLA compiles on the host's CPUs, and
the stall check compares each shape's first and second hit: two plans at once make both
timings noisier. Sequential is the safe default; waiting for an engine to come up never holds
the turn, so a replica that is down does not block the others.

One-shot: every replica is warmed (each retried on a restart mid-way, as before); the exit code
is the highest of the replicas' (``EXIT_CODES``: 0 passed < 1 failed < 2 engine not ready < 3
gateway not told). ``--watch``: one watch loop per replica; only the replica whose instance
changed (or that came back) is warmed again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from env.replicas import Upstream, UpstreamError, check_url, static_upstreams
from env.settings import EngineSettings, GatewaySettings, WarmupSettings
from warmup.progress import Reporter, make_reporter
from warmup.sidecar import Outcome, Sidecar
from warmup.status import StatusServer, Tracked, WarmState


@dataclass(frozen=True)
class Target:
    """One engine replica to warm: its name (host:port), URL, and index on this host if any."""

    name: str
    url: str
    index: int | None = None


def targets(
    engine: EngineSettings, gateway: GatewaySettings, warmup: WarmupSettings
) -> list[Target]:
    """The replicas this sidecar warms, in order. Raises ``UpstreamError`` (one line each)."""
    if warmup.engine_url.strip():
        problems: list[str] = []
        out: list[Target] = []
        for raw in warmup.engine_url.split(","):
            url, url_problems = check_url(raw, "WARMUP_ENGINE_URL")
            problems += url_problems
            if not url_problems:
                up = Upstream(url)
                if any(t.name == up.name for t in out):
                    problems.append(f"WARMUP_ENGINE_URL: replica {up.name} is listed twice")
                    continue
                out.append(Target(up.name, url))
        if problems:
            raise UpstreamError(problems)
        return out
    # This host's replicas (also when compose hands the list over as GATEWAY_UPSTREAM_URLS):
    # each has its own hot-cache subdir, which the cache save names by index.
    local = {Upstream(url).name: i for i, url in enumerate(engine.replica_urls)}
    indexed = engine.replicas > 1
    return [
        Target(u.name, u.url, local.get(u.name) if indexed else None)
        for u in static_upstreams(engine, gateway)
    ]


def report_path_for(base: Path, target: Target, several: bool) -> Path:
    """One report per replica: ``report.json`` alone, ``report-<host>-<port>.json`` with several."""
    if not several:
        return base
    parts = urlsplit(target.url)
    return base.with_name(f"{base.stem}-{parts.hostname}-{parts.port}{base.suffix}")


def use_rich(replicas: int, watch: bool, parallel: int) -> bool:
    """Rich draws one live display at a time: only when one replica at a time can be live.

    One-shot with ``parallel`` 1 waits for and warms the replicas strictly one after another;
    ``--watch`` waits for every replica at once, so with several it gets tagged plain lines.
    """
    return replicas == 1 or (not watch and parallel == 1)


def worst(outcomes: list[Outcome]) -> Outcome:
    """The outcome with the highest exit code (the first of equals)."""
    return max(outcomes, key=lambda o: o.exit_code)


@dataclass
class Fleet:
    """The sidecars of every replica, and the status server over them."""

    sidecars: list[Sidecar]
    parallel: int = 1

    @classmethod
    def load(
        cls,
        profile: str,
        report_path: Path | None = None,
        notify: bool = True,
        force_plain: bool = False,
        parallel: int = 1,
        watch: bool = False,
        reporter: Reporter | None = None,
    ) -> Fleet:
        """Raises ``UpstreamError`` when the replica list is unusable."""
        warmup = WarmupSettings.load(profile)
        found = targets(EngineSettings.load(profile), GatewaySettings.load(profile), warmup)
        several = len(found) > 1
        plain = force_plain or not use_rich(len(found), watch, parallel)
        base = Sidecar.load(profile, reporter or make_reporter(plain), report_path, notify)
        sidecars = []
        for target in found:
            sidecars.append(
                replace(
                    base,
                    url=target.url,
                    name=target.name if several else "",
                    replica_index=target.index,
                    reporter=reporter or make_reporter(plain, target.name if several else ""),
                    report_path=report_path_for(base.report_path, target, several),
                    warm=WarmState(),  # replace() would share the base's
                )
            )
        return cls(sidecars, parallel)

    def tracked(self) -> list[Tracked]:
        return [Tracked(s.name or _name(s.engine_url), s.engine_url, s.warm) for s in self.sidecars]

    async def run_once(self) -> list[Outcome]:
        """Warm every replica once; at most ``parallel`` at a time (waiting included)."""
        turn = asyncio.Semaphore(self.parallel)

        async def one(sidecar: Sidecar) -> Outcome:
            async with turn:
                return await sidecar.run_once()

        return list(await asyncio.gather(*(one(s) for s in self.sidecars)))

    async def watch(self) -> None:
        """One watch loop per replica; plans share ``parallel`` turns, waiting does not."""
        slot = asyncio.Semaphore(self.parallel)
        for sidecar in self.sidecars:
            sidecar.slot = slot
        await asyncio.gather(*(s.watch() for s in self.sidecars))

    async def serve_status(self, host: str, port: int) -> StatusServer:
        server = StatusServer(self.tracked())
        await server.start(host, port)
        return server


def _name(url: str) -> str:
    return Upstream(url).name
