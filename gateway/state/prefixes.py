"""``FleetPrefixes``: one prefix, one replica, whichever gateway of the fleet takes the request.

Why: ``GATEWAY_ROUTING=prefix`` remembers where it sent each prompt prefix and sends it there
again (``gateway.routing.prefix``). Each gateway places a prefix it has not seen by its own view
of the loads, so with N workers or pods one system prompt was warmed on up to N replicas: N
prefills of it, and each replica's cache holding what one would do.

How, with no round trip on the request path:

- a gateway that places a prefix (a new one, or one whose replica left) offers the placement to
  the fleet through the outbox: the ``PLACE`` script keeps the first placement of each prefix
  (a compare-and-set on ``gw:px:<digest>``, kept ``TTL_S`` after its last offer) and publishes
  the placement that holds on a stream (``gw:prefixes``, the last ``STREAM_LEN`` placements)
  when the offer was new or lost;
- every gateway reads the stream's new entries into its own table at each heartbeat, and in
  the outbox flush that carries an offer of its own (``SharedState.riders``: the same
  pipeline; a flush without an offer reads nothing, so a request that places nothing pays no
  read).

So a gateway that placed a prefix elsewhere than the fleet learns the fleet's choice right
after its own request, from the same pipeline that carried the offer: at most one request per
gateway goes astray, and a new gateway starts from the stream's recent placements. With the
store down each gateway keeps its own table (the offers are dropped with the outbox), as one
gateway does alone; a store restarted empty takes the next offers as new.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from gateway.state.scripts import PLACE
from gateway.state.store import PREFIX, Command, SharedState

log = logging.getLogger("gateway.state")

PLACEMENT = PREFIX + "px:"
STREAM = PREFIX + "prefixes"
TTL_S = 3600  # a placement nobody offered for an hour is forgotten (offers come on a table miss)
STREAM_LEN = 65536  # the stream keeps about as many placements as a gateway's table
READ_COUNT = 4096  # entries read per exchange (a new gateway catches up over a few)


class Learner(Protocol):
    """What the fleet table drives of ``gateway.routing.prefix.PrefixAffinity``."""

    def learn(self, digest: bytes, name: str) -> None: ...


class FleetPrefixes:
    def __init__(self, state: SharedState, table: Learner) -> None:
        self.state = state
        self.table = table
        self.last_id = "0"  # the stream's last entry read ("0": from its start)
        self.learned = 0  # placements read from the stream (tests)
        self._offered = False  # an offer queued since the last read

    def place(self, digest: bytes, name: str, replaced: str | None) -> None:
        """A placement this gateway made (``PrefixAffinity.placed``), offered to the fleet."""
        hexd = digest.hex()
        keys = [PLACEMENT + hexd, STREAM]
        self.state.send((PLACE, keys, [name, replaced or "", TTL_S, STREAM_LEN, hexd]))
        self._offered = True

    def commands(self) -> list[Command]:
        self._offered = False
        return [("XREAD", "COUNT", READ_COUNT, "STREAMS", STREAM, self.last_id)]

    def ride(self) -> list[Command]:
        return self.commands() if self._offered else []

    def apply(self, results: list[Any]) -> None:
        reply = results[0]
        if not reply:
            return
        for entry_id, fields in reply[0][1]:  # [[stream, [[id, [field, value, ...]], ...]]]
            self.last_id = entry_id
            record = dict(zip(fields[::2], fields[1::2], strict=False)) if fields else {}
            try:
                digest, name = bytes.fromhex(record["d"]), record["r"]
            except (KeyError, ValueError, TypeError):
                log.warning("prefix placements: a malformed entry skipped: %r", fields)
                continue
            self.table.learn(digest, name)
            self.learned += 1
