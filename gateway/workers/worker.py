"""One gateway worker (``GATEWAY_WORKERS`` > 1): the drain of one process, on a shared port.

``WorkerServer`` is ``DrainingServer`` with three additions:

- its own listening socket on the gateway's port with ``SO_REUSEPORT``: the kernel hashes each
  new connection to one of the workers' sockets, so a burst spreads over every core (a socket
  shared by all workers is accepted from by whichever wakes first, and libuv then accepts every
  pending connection at once). A worker that dies takes only the connections still in its own
  accept queue with it; the others keep accepting.
- a private Unix socket (``metrics.socket_path``) where it writes its own ``/metrics`` page for
  a sibling, and a ``gather`` hook on its metrics so that a scrape it answers carries every
  worker's page (``metrics.py``).
- a drain of its own when its supervisor is gone (SIGKILLed: no SIGTERM will come): the parent's
  pid is checked once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from functools import partial
from pathlib import Path

import uvicorn

from gateway.edge.drain import DrainingServer
from gateway.workers.metrics import gather, socket_path

log = logging.getLogger("gateway.workers")
_PARENT_CHECK_TICKS = 10  # uvicorn ticks every 0.1 s


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on ``host:port`` that other workers' sockets share (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog, reuse_port=True)


class WorkerServer(DrainingServer):
    def __init__(
        self,
        config: uvicorn.Config,
        app: object,
        drain_timeout_s: float,
        *,
        index: int,
        workers: int,
        peers_dir: str,
        parent_pid: int,
    ) -> None:
        super().__init__(config, app, drain_timeout_s)  # type: ignore[arg-type]
        self.index = index
        self.workers = workers
        self.peers_dir = peers_dir
        self.parent_pid = parent_pid
        self._peer: asyncio.AbstractServer | None = None
        self._path = socket_path(peers_dir, index)

    def serve_forever(self) -> None:
        """Bind the shared port and run until drained."""
        cfg = self.config
        # A SIGHUP the supervisor forwards while this worker still starts must not kill it (the
        # default action); the keys watcher takes SIGHUP over once it runs.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.run(sockets=[listen(cfg.host, cfg.port, cfg.backlog)])

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        components = getattr(self.drainable, "components", None)
        if self.should_exit or components is None:
            return  # the lifespan failed: uvicorn exits
        metrics = components.metrics
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # a SIGKILLed predecessor's

        async def page(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                w.write(metrics.render())
                await w.drain()
            finally:
                w.close()

        self._peer = await asyncio.start_unix_server(page, str(self._path))
        metrics.gather = partial(gather, self.peers_dir, self.workers, self.index)
        log.info("worker %d (pid %d) serving on %s:%d", self.index, os.getpid(),
                 self.config.host, self.config.port)  # fmt: skip

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._peer is not None:
            self._peer.close()
            with contextlib.suppress(FileNotFoundError):
                Path(self._path).unlink()
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        if (
            counter % _PARENT_CHECK_TICKS == 0
            and self.drain_deadline is None
            and os.getppid() != self.parent_pid
        ):
            log.warning("worker %d: the supervisor (pid %d) is gone: draining",
                        self.index, self.parent_pid)  # fmt: skip
            self.handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)
