"""The connection to the shared store: scripts in one round trip, an ordered outbox, a heartbeat.

Why an outbox: what must not block or fail a request (a tpm settlement, a lease release) is
queued and sent by one task, batched into one pipeline per wake-up (a request's release and its
settlement leave together: one round trip), in order with the lease renewals, so a renewal
can never re-create a lease released just before it. The same task renews every lease this
gateway holds and its membership every ``ttl / 3`` s: one script, whose answer is the number of
live gateways (for the fallback shares) and whose failure or success drives ``Link``; what the
``pulls`` read (the fleet's warm-up reports and drains, ``view.py``) rides in the same pipeline;
``riders`` may ride an outbox flush too (the fleet's prefix placements, ``prefixes.py``: a
gateway learns the fleet's choice in the pipeline that carried its own offer).

The request path calls ``script`` (admission: a charge, a lease): one round trip, bounded by
``GATEWAY_STATE_TIMEOUT_S``, no retries (a retry is the fallback's job). While the link is down
the request path does not touch the network at all; only the heartbeat probes.

Every round trip is counted (``round_trips``, the ``gateway_state_round_trips_total`` metric).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.state.link import Link, Policy
from gateway.state.resp import ReplyError, RespClient
from gateway.state.scripts import ALL, RENEW, Script
from gateway.state.url import redact

log = logging.getLogger("gateway.state")

PREFIX = "gw:"
MEMBERS = PREFIX + "members"

Command = tuple[Any, ...]  # ("ZREM", key, member) or (Script, keys, args)


class StateDown(Exception):
    """The store is not usable now (the link is in fallback, or this call just failed)."""


class HeldLeases:
    """What the heartbeat renews: ``(lease set, member)`` pairs (``leases.Leases``)."""

    def held(self) -> list[tuple[str, str]]:
        return []


class Pull(Protocol):
    """State read at every heartbeat, in its pipeline (``view.ReplicaView``): the commands to
    append, then what they answered."""

    def commands(self) -> list[Command]: ...

    def apply(self, results: list[Any]) -> None: ...


class Rider(Pull, Protocol):
    """A pull that may also ride an outbox flush: ``ride`` is what to read then (nothing, most
    of the time: ``prefixes.FleetPrefixes`` reads after a flush only when it made an offer)."""

    def ride(self) -> list[Command]: ...


class SharedState:
    def __init__(
        self,
        url: str,
        policy: Policy = "local",
        lease_ttl_s: float = 10.0,
        timeout_s: float = 0.25,
        gateway_id: str | None = None,
    ) -> None:
        self.url = url
        self.ttl_s = lease_ttl_s
        self.timeout_s = timeout_s
        self.id = gateway_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.link = Link(redact(url), policy, lease_ttl_s / 3)
        self.round_trips = 0
        self.leases: HeldLeases = HeldLeases()
        self.pulls: list[Pull] = []  # read at each heartbeat
        self.riders: list[Rider] = []  # read at each heartbeat, and in a flush when they ask
        self._redis = RespClient(url, timeout_s)
        self._outbox: list[Command] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- state ---------------------------------------------------------------------------------

    @property
    def fallback(self) -> bool:
        return self.link.fallback

    @property
    def gateways(self) -> int:
        return self.link.gateways

    def local_or_refuse(self) -> None:
        """The store is down: return to use the local fallback, or raise the ``closed`` 503."""
        if self.link.policy == "closed":
            raise self.link.refusal()

    def describe(self) -> dict[str, object]:
        return {**self.link.describe(), "gateway_id": self.id, "round_trips": self.round_trips}

    # -- the request path ----------------------------------------------------------------------

    async def script(self, script: Script, keys: Sequence[str], args: Sequence[object]) -> Any:
        """Run ``script`` now (one round trip); ``StateDown`` if the store cannot answer."""
        if self.link.fallback:
            raise StateDown(self.link.reason)
        try:
            return await self._eval(script, keys, args)
        except (TimeoutError, ReplyError, OSError) as exc:
            self.link.failed(_why(exc))
            raise StateDown(_why(exc)) from None

    async def _eval(self, script: Script, keys: Sequence[str], args: Sequence[object]) -> Any:
        self.round_trips += 1
        try:
            return await self._redis.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not exc.noscript:
                raise
            await self._load()  # a new or restarted server: load every script once, again
            self.round_trips += 1
            return await self._redis.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _load(self) -> None:
        self.round_trips += 1
        for reply in await self._redis.pipeline([("SCRIPT", "LOAD", s.source) for s in ALL]):
            if isinstance(reply, ReplyError):
                raise reply

    # -- the outbox ----------------------------------------------------------------------------

    def send(self, command: Command) -> None:
        """Queue a write that must not block a request; dropped while the link is down (a lost
        release expires with its TTL; a lost settlement is a refund not given)."""
        if self.link.fallback or self._closing:
            return
        self._outbox.append(command)
        self._wake.set()

    async def _flush(self, commands: list[Command]) -> list[Any]:
        wire: list[Command] = []
        for cmd in commands:
            if isinstance(cmd[0], Script):
                script, keys, args = cmd
                wire.append(("EVALSHA", script.sha, len(keys), *keys, *args))
            else:
                wire.append(cmd)
        self.round_trips += 1
        results = await self._redis.pipeline(wire)
        redo = [i for i, r in enumerate(results) if isinstance(r, ReplyError) and r.noscript]
        if redo:  # a restarted server: the scripts once, then what they refused
            await self._load()
            again = await self._flush([commands[i] for i in redo])
            for i, r in zip(redo, again, strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                raise r
        return list(results)

    def _renewal(self) -> Command:
        held = self.leases.held()
        keys = [MEMBERS, *(k for k, _ in held)]
        args: list[object] = ["", self.ttl_s, self.id, *(m for _, m in held)]
        return (RENEW, keys, args)

    async def beat(self) -> int:
        """Renew membership and leases now, with whatever is queued; the live gateways."""
        queued = len(self._outbox)
        pulls = [(p, p.commands()) for p in (*self.pulls, *self.riders)]
        commands = [*self._outbox, self._renewal(), *(c for _, cs in pulls for c in cs)]
        self._outbox = []
        self._wake.clear()
        try:
            results = await self._flush(commands)
        except (TimeoutError, ReplyError, OSError) as exc:
            self.link.failed(_why(exc))
            raise StateDown(_why(exc)) from None
        gateways = int(results[queued])
        self.link.recovered(gateways)
        _apply(pulls, results[queued + 1 :])
        return gateways

    async def _send_queued(self) -> None:
        """Flush the outbox now, with what the riders read."""
        commands, self._outbox = self._outbox, []
        self._wake.clear()
        if not commands:
            return
        riders: list[tuple[Pull, list[Command]]] = [
            (p, cs) for p in self.riders if (cs := p.ride())
        ]
        try:
            results = await self._flush([*commands, *(c for _, cs in riders for c in cs)])
        except (TimeoutError, ReplyError, OSError) as exc:
            self.link.failed(_why(exc))
            return
        _apply(riders, results[len(commands) :])

    async def _run(self) -> None:
        interval = self.ttl_s / 3
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + interval  # ``start`` just beat
        while True:
            timeout = max(0.0, next_beat - loop.time())
            # asyncio.timeout, not wait_for: 3.11's wait_for can drop the cancel that stops this
            # loop when the wake-up lands in the same turn, and the shutdown would wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            if loop.time() >= next_beat or self.link.fallback:
                next_beat = loop.time() + interval
                with contextlib.suppress(StateDown):
                    await self.beat()
                if self.link.fallback:  # probe again after the interval, not at once
                    self._outbox.clear()
                    await asyncio.sleep(max(0.0, next_beat - loop.time()))
                continue
            await self._send_queued()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the fleet (one heartbeat); unreachable or refused: one line, and the policy."""
        try:
            with contextlib.suppress(ReplyError, OSError, TimeoutError):
                await self._load()  # the request path's first script then needs no second trip
            await self.beat()
            log.info("shared state %s: %d gateway(s) live, leases renewed every %gs (TTL %gs)",
                     self.link.where, self.gateways, self.ttl_s / 3, self.ttl_s)  # fmt: skip
        except StateDown:
            pass  # Link.failed logged the one line
        self._task = asyncio.get_running_loop().create_task(self._run(), name="shared-state")

    async def stop(self) -> None:
        """Leave: flush what is queued, give back every lease and the membership (best effort:
        whatever is not given back expires with its TTL)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self.link.fallback:
            commands = [*self._outbox, ("ZREM", MEMBERS, self.id)]
            commands += [("ZREM", k, m) for k, m in self.leases.held()]
            with contextlib.suppress(ReplyError, OSError, asyncio.TimeoutError):
                await self._flush(commands)
        await self._redis.aclose()


def _apply(pulls: list[tuple[Pull, list[Command]]], results: list[Any]) -> None:
    """Give each pull its commands' answers, in order; a bad record must not stop the caller."""
    at = 0
    for pull, cs in pulls:
        try:
            pull.apply(results[at : at + len(cs)])
        except Exception:
            log.exception("shared state: applying %s failed", type(pull).__name__)
        at += len(cs)


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]
