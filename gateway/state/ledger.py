"""``FleetLedger``: one chip-time ledger for the whole fleet (``GATEWAY_STATE_URL``).

Why: every gateway samples every engine's busy time, and alone it charges all of it to the
requests it finished itself; with N gateways (pods, or workers of one) each busy second was
charged N times, each time to one gateway's part of the traffic. With shared state one gateway,
the leader, keeps the ledger (``gateway.ledger.Ledger``): the others send each finished
request's work to it and charge nothing. The leadership is a key in Redis taken by whoever finds
it free, renewed at each heartbeat and taken over by another gateway within the lease TTL when
its holder dies; the work travels as a list (one ``RPUSH`` per finished request, through the
outbox: no round trip of its own) that the leader empties at each heartbeat, in the heartbeat's
own pipeline (``SharedState.pulls``). The leader charges the engines' busy time to the fleet's
work as one gateway does alone, so ``sum(gateway_key_chip_seconds_total)`` over the fleet is
every busy second once.

Error bars (gateway/README.md, the ledger): work reaches the leader up to one heartbeat late
(``GATEWAY_STATE_LEASE_TTL_S / 3``): a settlement can fall between a request's end and its
arrival, and its share then goes to the next settlement's requests. A new leader starts from its
own next engine samples (the busy time between the old leader's last sample and them is not
charged). While the store is unavailable each gateway keeps its role: what the others finish is
dropped with the outbox (a request of theirs is not charged), the leader charges its own.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Protocol

from gateway.ledger import Work
from gateway.state.scripts import LEDGER
from gateway.state.store import PREFIX, Command, SharedState

log = logging.getLogger("gateway.state")

LEADER = PREFIX + "ledger:leader"
WORK = PREFIX + "ledger:work"


class Kept(Protocol):
    """What the fleet ledger drives of ``gateway.ledger.Ledger``."""

    @property
    def leader(self) -> bool: ...

    def lead(self, leader: bool) -> None: ...

    def record(self, replica: str, work: Work) -> None: ...


def encode(replica: str, work: Work) -> str:
    return json.dumps([replica, work.key, work.prefill_tokens, work.decode_tokens])


def decode(item: str) -> tuple[str, Work]:
    replica, key, prefill, decode_ = json.loads(item)
    return str(replica), Work(str(key), int(prefill), int(decode_))


class FleetLedger:
    def __init__(self, state: SharedState, ledger: Kept) -> None:
        self.state = state
        self.ledger = ledger

    def send(self, replica: str, work: Work) -> None:
        """A request this gateway finished, for the leader (``Ledger.remote``)."""
        self.state.send(("RPUSH", WORK, encode(replica, work)))

    def commands(self) -> list[Command]:
        lease_ms = math.ceil(self.state.ttl_s * 1000)
        return [(LEDGER, [LEADER, WORK], [self.state.id, lease_ms])]

    def apply(self, results: list[Any]) -> None:
        reply = results[0]
        leader = int(reply[0]) == 1
        if leader != self.ledger.leader:
            log.info("chip-time ledger: %s", "this gateway keeps the fleet's ledger" if leader
                     else "another gateway keeps the fleet's ledger")  # fmt: skip
        self.ledger.lead(leader)
        if not leader:
            return
        for item in reply[1]:
            try:
                replica, work = decode(item)
            except (ValueError, TypeError):
                log.warning("chip-time ledger: a malformed work record dropped: %r", item[:200])
                continue
            self.ledger.record(replica, work)
