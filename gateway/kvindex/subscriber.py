"""One replica's event stream into its ``ReplicaBlocks``: the I/O around the pure index.

A ZMQ SUB socket connected to the replica's publisher (``env/kvevents.py`` says where), read by
one asyncio task. Each message goes through ``decode`` and ``ReplicaBlocks.check``:

- the next sequence number: applied;
- a sequence number at or below the last one: a new publisher (the engine restarted: its cache
  is empty), so the entries are reset first;
- a gap (the PUB socket drops messages past its high-water mark, or this gateway was slow), or
  the first message of a subscription that starts late (a gateway started next to warm engines):
  the missed batches are asked of the publisher's replay socket (a DEALER to its ROUTER: "send
  me every batch from seq N", answered with the batches it still buffers, then an end marker).
  When the replay does not reach back to the missing one, or does not answer within
  ``replay_timeout_s``, the entries are reset and what did arrive is applied: the index may
  then miss blocks the engine holds (a missed prediction), never claim blocks it dropped;
- a message that does not decode: counted, and the entries reset (the batch may have removed
  blocks).

A vanished publisher (the engine died or its host is gone: ZMQ's disconnect event, with ZMTP
heartbeats so that a silent host counts too) resets the entries and marks the view not live; ZMQ
reconnects by itself, and the first batch of whatever publishes there is handled as above. The
replica's engine instance (the gateway's health poll) is a second witness: a message seen under a
new instance resets first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from gateway.kvindex.events import END_SEQ, Batch, Malformed, decode
from gateway.kvindex.hashing import BlockHasher, HashingError
from gateway.kvindex.index import ReplicaBlocks

log = logging.getLogger("gateway.kvindex")
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000


class Subscriber:
    def __init__(
        self,
        name: str,
        endpoint: str,
        replay_endpoint: str,
        blocks: ReplicaBlocks,
        hasher: Callable[[int], BlockHasher],
        instance: Callable[[], str | None] = lambda: None,
        replay_timeout_s: float = 1.0,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.blocks = blocks
        self.hasher = hasher
        self.instance = instance
        self.replay_timeout_s = replay_timeout_s
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.connected = False
        self.malformed = 0
        self.replays = 0
        self._instance: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"kv-events {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)
        poller = zmq.asyncio.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                for s, _ in await poller.poll():
                    if s is monitor:
                        self._on_monitor(parse_monitor_message(await monitor.recv_multipart()))
                    else:
                        await self._guarded(await sock.recv_multipart())
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    def _on_monitor(self, event: dict[str, object]) -> None:
        if event["event"] == zmq.EVENT_CONNECTED:
            self.connected = True
            log.info("kv events: subscribed to %s (%s)", self.name, self.endpoint)
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            if self.connected:
                log.info("kv events: %s's publisher went away: its entries are dropped", self.name)
            self.connected = False
            self.blocks.reset()

    async def _guarded(self, frames: list[bytes]) -> None:
        """``handle``, never letting a surprise end the subscription with a stale view."""
        try:
            await self.handle(frames)
        except Exception:
            log.exception("kv events from %s: entries dropped", self.name)
            self.blocks.reset()

    async def handle(self, frames: list[bytes]) -> None:
        """One published message (also the test seam: frames as the socket gives them)."""
        instance = self.instance()
        if instance != self._instance:
            if self._instance is not None:
                self.blocks.reset()  # the health poll saw a new engine instance
            self._instance = instance
        try:
            seq, batch = decode(frames)
        except Malformed as exc:
            self.malformed += 1
            log.warning("kv events from %s: malformed (%s): entries dropped", self.name, exc)
            self.blocks.reset()
            return
        order = self.blocks.check(seq)
        if order == "restart":
            self.blocks.reset()
        if (self.blocks.last_seq is None and seq > 0) or order == "gap":
            await self._catch_up(seq)
        self._apply(seq, batch)

    async def _catch_up(self, upto: int) -> None:
        """Replay ``[last + 1, upto)``; reset unless the replay covers it exactly."""
        start = 0 if self.blocks.last_seq is None else self.blocks.last_seq + 1
        fresh = self.blocks.last_seq is None
        got = await self.replay(start, upto)
        if not fresh and (not got or got[0][0] != start):
            self.blocks.reset()  # the missed batches are gone: start over from what we have
        for seq, batch in got:
            if self.blocks.last_seq is not None and seq != self.blocks.last_seq + 1:
                self.blocks.reset()
            self._apply(seq, batch)

    async def replay(self, start: int, upto: int) -> list[tuple[int, Batch]]:
        """Batches ``start <= seq < upto`` from the publisher's replay buffer (may be fewer)."""
        self.replays += 1
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        out: list[tuple[int, Batch]] = []
        try:
            dealer.connect(self.replay_endpoint)
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            async with asyncio.timeout(self.replay_timeout_s):
                while True:
                    frames = await dealer.recv_multipart()
                    if (
                        len(frames) == 4
                        and int.from_bytes(frames[2], "big", signed=True) == END_SEQ
                    ):
                        break
                    try:
                        seq, batch = decode(frames[1:])
                    except Malformed:
                        self.malformed += 1
                        return []
                    if start <= seq < upto:
                        out.append((seq, batch))
        except TimeoutError:
            log.warning("kv events: %s's replay did not answer in %gs", self.name,
                        self.replay_timeout_s)  # fmt: skip
            return []
        finally:
            dealer.close(linger=0)
        return out

    def _apply(self, seq: int, batch: Batch) -> None:
        for first in self.blocks.apply(seq, batch):
            if self.blocks.verified is None and first.token_ids:
                self._verify(first.block_size, first.token_ids, first.block_hashes[0])

    def _verify(self, block_size: int, tokens: list[int], published: int | bytes) -> None:
        """Compare the gateway's hash of a first block with the engine's (once per view)."""
        try:
            ours = self.hasher(block_size).hashes(tokens, limit=1)
        except HashingError:
            self.blocks.verified = False
            return
        theirs = published if isinstance(published, int) else int.from_bytes(published, "big")
        self.blocks.verified = bool(ours) and ours[0] == theirs & ((1 << 64) - 1)
        if not self.blocks.verified:
            log.warning(
                "kv events: %s hashes blocks differently from this gateway (its "
                "--prefix-caching-hash-algo or PYTHONHASHSEED): kv routing ignores it",
                self.name,
            )
