"""The failure policy, pure: is the shared store usable, and what to do while it is not.

Why it exists: Redis down, slow or restarted empty must never take the API down and must never
silently lift every limit. ``GATEWAY_STATE_FAILURE=local`` (default): each gateway enforces its
share of every limit (``limit // live gateways``, at least 1, from the last membership it saw),
``/health`` stays 200 and says so, a gauge reads 1, one log line per transition; the heartbeat
brings it back by itself. ``closed``: requests that need the store are refused with a 503 and a
``Retry-After`` until it answers again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Literal

from gateway.errors import OpenAIError

Policy = Literal["local", "closed"]
log = logging.getLogger("gateway.state")


def share(limit: int, gateways: int) -> int:
    """One gateway's share of a fleet-wide limit (never 0: a key is never locked out)."""
    return max(1, limit // max(1, gateways))


class Link:
    """Shared or fallback, why, since when, and how many gateways were last seen alive."""

    def __init__(
        self, where: str, policy: Policy, retry_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.where = where  # the URL, password redacted
        self.policy = policy
        self.retry_after = max(1, math.ceil(retry_s))
        self._clock = clock
        self.fallback = False
        self.reason: str | None = None
        self.since = clock()
        self.gateways = 1  # live gateways in the last membership seen (this one at least)
        self.transitions = 0

    @property
    def mode(self) -> str:
        if not self.fallback:
            return "shared"
        return "local" if self.policy == "local" else "closed"

    def failed(self, reason: str) -> None:
        """The store did not answer (or answered an error): fall back, logged once."""
        if self.fallback:
            self.reason = reason
            return
        self.fallback, self.reason, self.since = True, reason, self._clock()
        self.transitions += 1
        if self.policy == "local":
            what = f"each gateway enforces limit/{self.gateways} of every shared limit"
        else:
            what = "requests are refused with 503 (GATEWAY_STATE_FAILURE=closed)"
        log.warning(
            "shared state %s unavailable (%s): %s until it answers", self.where, reason, what
        )

    def recovered(self, gateways: int) -> None:
        """The store answered: shared again (logged once) with the membership it reported."""
        self.gateways = max(1, gateways)
        if not self.fallback:
            return
        self.fallback, self.reason, self.since = False, None, self._clock()
        self.transitions += 1
        log.warning("shared state %s answers again: limits are shared (%d gateways)",
                    self.where, self.gateways)  # fmt: skip

    def refusal(self) -> OpenAIError:
        """The answer under ``closed`` while the store is unavailable."""
        return OpenAIError(
            503, "the gateway's shared state (Redis) is unavailable and "
            "GATEWAY_STATE_FAILURE=closed; retry later", code="state_unavailable",
            retry_after=self.retry_after,
        )  # fmt: skip

    def describe(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "since": self.since,
            "gateways": self.gateways,
            "store": self.where,
        }
