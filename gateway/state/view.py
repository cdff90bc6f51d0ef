"""``ReplicaView``: warm-up reports and replica drains that reach every gateway of the fleet.

Why: the warm-up sidecar POSTs its report to one gateway process and an operator drains a replica
through one (``make drain``); with several workers or pods, the others would keep a replica
``warming_up`` forever (or route to the one being drained). With shared state each such action
is written to Redis as it is taken (through the outbox, ``ReplicaSet.shared``), and every
gateway reads the records of the replicas it knows at each heartbeat (``SharedState.pulls``:
in the heartbeat's own pipeline, no extra round trip), so a report or a drain received by one
gateway holds for all within ``GATEWAY_STATE_LEASE_TTL_S / 3``, a worker restarted later
included.

- ``gw:warm:<engine instance>``: the last report for that engine process (JSON), kept a day
  (an instance id names one process: a restarted engine is a new one and starts unwarmed).
- ``gw:drain``: replica name -> 1 (drained) or 0 (undrained by an operator). A name absent
  (never drained, or a store restarted empty) leaves each gateway's own flag as it is: an empty
  store never puts a drained replica back in rotation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.replicas.health import STATE_OF_REPORT, ReportStatus, Snapshot, StaleInstance
from gateway.state.store import PREFIX, Command, SharedState

log = logging.getLogger("gateway.state")

WARM = PREFIX + "warm:"
DRAIN = PREFIX + "drain"
WARM_TTL_S = 86400


class _Health(Protocol):
    def snapshot(self) -> Snapshot: ...


class Tracked(Protocol):
    """What one replica shows the view (``gateway.replicas.replica.Replica``)."""

    name: str
    draining: bool

    @property
    def health(self) -> _Health: ...


class Replicas(Protocol):
    """The part of ``gateway.replicas.core.ReplicaSet`` the view reads and applies to."""

    @property
    def replicas(self) -> Sequence[Tracked]: ...

    def report_warmup(
        self, instance: str, status: ReportStatus, step: str | None, detail: str | None,
        share: bool = True,
    ) -> Any: ...  # fmt: skip

    def set_draining(self, name: str, draining: bool, share: bool = True) -> Any: ...


class ReplicaView:
    def __init__(self, state: SharedState, replicas: Replicas) -> None:
        self.state = state
        self.replicas = replicas
        self._asked: list[str] = []  # the instances of the last pull, in MGET's order

    # -- what this gateway was told: to every gateway -------------------------------------------

    def warmup(self, instance: str, status: str, step: str | None, detail: str | None) -> None:
        record = json.dumps({"status": status, "step": step, "detail": detail})
        self.state.send(("SET", WARM + instance, record, "EX", WARM_TTL_S))

    def drain(self, name: str, draining: bool) -> None:
        self.state.send(("HSET", DRAIN, name, "1" if draining else "0"))

    # -- what the others were told: read at each heartbeat (``SharedState.pulls``) -------------

    def commands(self) -> list[Command]:
        self._asked = [
            i for r in self.replicas.replicas if (i := r.health.snapshot().engine_instance)
        ]
        out: list[Command] = [("HGETALL", DRAIN)]
        if self._asked:
            out.append(("MGET", *(WARM + i for i in self._asked)))
        return out

    def apply(self, results: list[Any]) -> None:
        flat = results[0] or []  # HGETALL: name, flag, name, flag, ...
        drains: dict[str, str] = dict(zip(flat[::2], flat[1::2], strict=False))
        records = dict(zip(self._asked, results[1] if len(results) > 1 else [], strict=False))
        for r in list(self.replicas.replicas):
            flag = drains.get(r.name)
            if flag is not None and (flag == "1") != r.draining:
                self.replicas.set_draining(r.name, flag == "1", share=False)
            snap = r.health.snapshot()
            raw = records.get(snap.engine_instance) if snap.engine_instance else None
            if raw is None or snap.engine_instance is None:
                continue
            try:
                rec = json.loads(raw)
                status = rec["status"]
                wanted = STATE_OF_REPORT[status]
            except (ValueError, KeyError, TypeError):
                continue
            if wanted == snap.state or snap.state == "engine_down":
                continue
            try:
                self.replicas.report_warmup(
                    snap.engine_instance, status, rec.get("step"), rec.get("detail"), share=False
                )
            except StaleInstance:
                continue
            log.info("warm-up %s for replica %s (instance %s): reported to another gateway",
                     status, r.name, snap.engine_instance)  # fmt: skip
