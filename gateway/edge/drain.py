"""SIGTERM drains the gateway instead of cutting it off: the server half of a rolling deploy.

uvicorn's own SIGTERM closes the listening socket at once and then waits for open connections:
a load balancer that still sends gets refused connections, and queued requests have no way to
tell "go elsewhere" from "failed". ``DrainingServer`` turns the first SIGTERM into a drain:

1. the gateway's state becomes ``draining``: ``/health`` answers 503 ``draining`` (the load
   balancer's readiness check takes it out of rotation) and new generation requests get 503
   with ``Retry-After``, while the socket stays open to say so;
2. requests in flight and in the admission queue finish, for up to ``GATEWAY_DRAIN_TIMEOUT_S``;
3. then uvicorn's normal shutdown (close the socket, close idle keep-alive connections, the
   lifespan's teardown) and exit status 0. A second SIGTERM, or SIGINT, stops at once.

The signal handler only records the deadline: the drain itself starts on the server's next tick
(every 0.1 s), on the event loop, where touching the gateway's state is safe.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Protocol

import uvicorn

log = logging.getLogger("gateway")


class Drainable(Protocol):
    """What the server needs of the app (``gateway.edge.app.GatewayApp``)."""

    def begin_drain(self) -> bool:
        """Stop taking new requests; False when there is nothing to drain (not started)."""
        ...

    def outstanding(self) -> int:
        """Requests in flight or queued."""
        ...


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        app: Drainable,
        drain_timeout_s: float,
    ) -> None:
        super().__init__(config)
        self.drainable = app
        self.drain_timeout_s = drain_timeout_s
        self.drain_deadline: float | None = None
        self._drain_started = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_deadline is None and not self.should_exit:
            self.drain_deadline = time.monotonic() + self.drain_timeout_s
            return  # not recorded as a captured signal: a finished drain exits 0
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if not self._drain_started:
                self._drain_started = True
                if self.drainable.begin_drain():
                    log.info("SIGTERM: draining (%d requests outstanding, up to %g s)",
                             self.drainable.outstanding(), self.drain_timeout_s)  # fmt: skip
            left = self.drainable.outstanding()
            if left == 0:
                log.info("drained: shutting down")
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                log.warning("drain timeout (%g s): %d requests still outstanding are cut off",
                            self.drain_timeout_s, left)  # fmt: skip
                self.should_exit = True
        return await super().on_tick(counter)
