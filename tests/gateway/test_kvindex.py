"""The KV-cache index (gateway/kvindex) and the ``kv`` routing policy, without an engine.

The promises: the gateway hashes a prompt exactly as vLLM does (checked against vLLM's own
functions); the index applies stores, removals and clears per group, predicts the cache hit the
engine's hybrid rule gives (full-attention chain, sliding-window blocks, the lcm alignment, the
last token never cached), stays bounded, and never keeps entries it cannot vouch for (a restart,
a gap the replay does not cover, a malformed batch, a vanished publisher); the subscriber talks
to vLLM's real ZMQ publisher (replay included); the policy prefers the replica that holds the
prompt, not past the load bound, and falls back to ``prefix`` when it knows nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import msgspec
import pytest

from env.kvevents import publisher_config, subscriber_endpoints
from gateway.kvindex.events import Batch, Cleared, Malformed, Removed, Stored, decode
from gateway.kvindex.fleet import KVIndex, hash_algo
from gateway.kvindex.hashing import BlockHasher, HashingError
from gateway.kvindex.index import ReplicaBlocks
from gateway.kvindex.subscriber import Subscriber
from gateway.routing import Request, build_scheduler
from gateway.routing.kv import KVCacheAware
from tests.support.process import free_port

B = 128  # the cpu profile's --block-size
TOKENS = list(range(1000, 1000 + 1100))  # 8 full blocks and a partial one


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- hashing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor"])
def test_hashes_equal_vllms_own(algo: str) -> None:
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core import kv_cache_utils as kv

    fn = get_hash_fn_by_name(algo)
    kv.init_none_hash(fn)
    parent = None
    theirs = []
    for i in range(len(TOKENS) // B):
        parent = kv.hash_block_tokens(fn, parent, TOKENS[i * B : (i + 1) * B], None)
        theirs.append(kv.maybe_convert_block_hash(parent))
    assert BlockHasher(B, algo).hashes(TOKENS) == theirs
    assert BlockHasher(B, algo, int_hashes=False).hashes(TOKENS)[0] == kv.hash_block_tokens(
        fn, None, TOKENS[:B], None
    )
    assert BlockHasher(B, algo).hashes(TOKENS, limit=2) == theirs[:2]
    assert BlockHasher(B, algo, seed="42").hashes(TOKENS)[0] != theirs[0]  # PYTHONHASHSEED


def test_unreproducible_hashes_are_refused() -> None:
    with pytest.raises(HashingError):
        BlockHasher(B, "xxhash")
    assert hash_algo("--foo 1 --prefix-caching-hash-algo sha256_cbor") == "sha256_cbor"
    assert hash_algo("--prefix-caching-hash-algo=xxhash") == "xxhash"
    assert hash_algo("") == "sha256"
    index = KVIndex(lambda: [], 1000, algo="xxhash")
    assert index.cached(TOKENS, ["a"]) is None  # routing falls back, nothing raises


# -- decoding (vLLM's own encoder) ---------------------------------------------------------------


def vllm_batch(*events: object) -> bytes:
    from vllm.distributed.kv_events import KVEventBatch

    return msgspec.msgpack.Encoder().encode(KVEventBatch(ts=time.time(), events=list(events)))


def stored(hashes: list[int], group: int = 1, kind: str = "full_attention", size: int = B,
           window: int | None = None, tokens: list[int] | None = None, parent: int | None = None,
           medium: str = "GPU"):  # fmt: skip
    from vllm.distributed.kv_events import BlockStored

    return BlockStored(
        block_hashes=hashes, parent_block_hash=parent, token_ids=tokens or [], block_size=size,
        lora_id=None, medium=medium, lora_name=None, group_idx=group, kv_cache_spec_kind=kind,
        kv_cache_spec_sliding_window=window,
    )  # fmt: skip


def removed(hashes: list[int], group: int = 1):
    from vllm.distributed.kv_events import BlockRemoved

    return BlockRemoved(block_hashes=hashes, medium="GPU", group_idx=group)


def frames(seq: int, payload: bytes) -> list[bytes]:
    return [b"kv", seq.to_bytes(8, "big"), payload]


def test_decodes_what_vllm_encodes() -> None:
    from vllm.distributed.kv_events import AllBlocksCleared

    seq, batch = decode(frames(7, vllm_batch(stored([1, 2]), removed([2]), AllBlocksCleared())))
    assert seq == 7 and [type(e) for e in batch.events] == [Stored, Removed, Cleared]
    assert batch.events[0].block_hashes == [1, 2] and batch.events[0].group_idx == 1
    for bad in ([b"kv", b"\x00" * 8], [b"kv", b"\x00", b""], frames(1, b"\xc1garbage"),
                frames(1, msgspec.msgpack.encode([1.0, [{"type": "Nope"}]]))):  # fmt: skip
        with pytest.raises(Malformed):
            decode(bad)


# -- the index -----------------------------------------------------------------------------------

H = BlockHasher(B)
CHAIN = H.hashes(TOKENS)  # 8 hashes: boundaries 128 .. 1024


def batch(*events: object) -> Batch:
    return decode(frames(0, vllm_batch(*events)))[1]


def gemma_stores(n_blocks: int) -> Batch:
    """What the tiny Gemma 4 publishes for a prompt cached up to ``n_blocks`` x 128 tokens: the
    full-attention chain and the sliding-window block at the end boundary (seen on the engine)."""
    return batch(
        stored([CHAIN[n_blocks - 1]], group=0, kind="sliding_window", size=256, window=128),
        stored(CHAIN[:n_blocks], tokens=TOKENS[: n_blocks * B]),
    )


def test_hit_follows_the_hybrid_rule() -> None:
    rb = ReplicaBlocks()
    assert rb.cached_tokens(CHAIN, B, len(TOKENS)) == 0  # nothing known
    firsts = rb.apply(0, gemma_stores(8))
    assert [f.group_idx for f in firsts] == [1]  # the full-attention chain start, to verify
    assert rb.hash_block == B
    assert rb.cached_tokens(CHAIN, B, len(TOKENS)) == 1024
    assert rb.cached_tokens(CHAIN[:5], B, 5 * B + 3) == 0  # no sliding block ends at 512 or 640
    # The last token is always computed (at most 1023 -> 768 tokens), and no sliding-window
    # block ends at 768: nothing. The engine agreed on the same prompts (1024 tokens: 0 hits,
    # 1025: 1024 hits).
    assert rb.cached_tokens(CHAIN, B, 1024) == 0
    assert rb.cached_tokens(CHAIN, B, 1025) == 1024
    rb.apply(1, batch(removed([CHAIN[3]])))  # a hole in the full chain at 512
    assert rb.cached_tokens(CHAIN, B, len(TOKENS)) == 0  # no sliding block at 256 either
    rb.apply(2, gemma_stores(2))
    assert rb.cached_tokens(CHAIN, B, len(TOKENS)) == 256
    rb.apply(3, batch(stored([CHAIN[0]], medium="CPU")))  # an offloaded copy: not a hit
    from vllm.distributed.kv_events import AllBlocksCleared

    rb.apply(4, batch(AllBlocksCleared()))
    assert rb.cached_tokens(CHAIN, B, len(TOKENS)) == 0 and len(rb) == 0


def test_a_single_full_attention_group() -> None:
    rb = ReplicaBlocks()
    rb.apply(0, batch(stored(CHAIN[:3], group=0)))
    assert rb.cached_tokens(CHAIN, B, len(TOKENS)) == 384
    assert rb.cached_tokens(CHAIN[:2], B, 2 * B + 1) == 256


def test_sequence_order() -> None:
    rb = ReplicaBlocks()
    assert rb.check(5) == "next"  # a first message: the subscriber decides about replay
    rb.apply(5, batch())
    assert (rb.check(6), rb.check(9), rb.check(5), rb.check(0)) == ("next", "gap", "restart",
                                                                    "restart")  # fmt: skip


def test_bounded_oldest_out() -> None:
    rb = ReplicaBlocks(max_blocks=4)
    rb.apply(0, batch(stored(CHAIN[:8], group=0)))
    assert len(rb) == 4
    assert rb.cached_tokens(CHAIN, B, len(TOKENS)) == 0  # the chain's head was forgotten: no claim


# -- the subscriber's decisions (frames handed in, replay faked) --------------------------------


class FakeReplay(Subscriber):
    def __init__(self, buffered: dict[int, bytes]) -> None:
        super().__init__("r", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", ReplicaBlocks(),
                         BlockHasher)  # fmt: skip
        self.buffered = buffered
        self.asked: list[tuple[int, int]] = []

    async def replay(self, start: int, upto: int) -> list[tuple[int, Batch]]:
        self.asked.append((start, upto))
        return [decode(frames(s, p)) for s, p in sorted(self.buffered.items()) if start <= s < upto]


@pytest.mark.anyio
async def test_a_gap_is_replayed_or_the_replica_reset() -> None:
    p = {i: vllm_batch(stored([CHAIN[i]], group=0, parent=CHAIN[i - 1] if i else None))
         for i in range(8)}  # fmt: skip
    sub = FakeReplay(p)
    await sub.handle(frames(0, p[0]))
    await sub.handle(frames(3, p[3]))  # 1 and 2 missed: replayed
    assert sub.asked == [(1, 3)] and sub.blocks.last_seq == 3
    assert sub.blocks.cached_tokens(CHAIN, B, len(TOKENS)) == 4 * B
    del sub.buffered[4]  # the publisher's buffer no longer has 4: start over from what arrives
    await sub.handle(frames(5, p[5]))
    assert sub.blocks.resets == 1 and sub.blocks.cached_tokens(CHAIN, B, len(TOKENS)) == 0
    assert len(sub.blocks) == 1  # block 5 is known, but no prefix is claimed through 4


@pytest.mark.anyio
async def test_a_late_subscriber_replays_from_zero() -> None:
    p = {i: vllm_batch(stored([CHAIN[i]], group=0)) for i in range(4)}
    sub = FakeReplay(p)
    await sub.handle(frames(3, p[3]))
    assert sub.asked == [(0, 3)] and sub.blocks.cached_tokens(CHAIN, B, len(TOKENS)) == 4 * B


@pytest.mark.anyio
async def test_restart_malformed_and_new_instance_reset() -> None:
    sub = FakeReplay({})
    instance = ["i1"]
    sub.instance = lambda: instance[0]
    await sub.handle(frames(0, vllm_batch(stored(CHAIN[:4], group=0))))
    await sub.handle(frames(1, vllm_batch()))
    await sub.handle(frames(0, vllm_batch(stored(CHAIN[:1], group=0))))  # seq back to 0
    assert sub.blocks.resets == 1 and sub.blocks.cached_tokens(CHAIN, B, len(TOKENS)) == B
    await sub.handle(frames(1, b"\xc1not msgpack"))
    assert sub.malformed == 1 and sub.blocks.resets == 2 and len(sub.blocks) == 0
    await sub.handle(frames(0, vllm_batch(stored(CHAIN[:2], group=0))))
    instance[0] = "i2"  # the health poll saw a new engine process
    await sub.handle(frames(1, vllm_batch()))
    assert sub.blocks.resets == 3 and len(sub.blocks) == 0


@pytest.mark.anyio
async def test_a_mismatched_hash_disables_the_view() -> None:
    sub = FakeReplay({})
    await sub.handle(frames(0, vllm_batch(stored([123], group=0, tokens=TOKENS[:B]))))
    assert sub.blocks.verified is False
    assert sub.blocks.cached_tokens([123], B, 500) == 0
    sub.blocks.reset()  # a new engine: checked again
    await sub.handle(frames(0, vllm_batch(stored(CHAIN[:1], group=0, tokens=TOKENS[:B]))))
    assert sub.blocks.verified is True


# -- over real ZMQ, against vLLM's own publisher -------------------------------------------------


@dataclass
class _Health:
    instance: str | None = "i"


@dataclass
class Watched:
    name: str
    url: str
    health: _Health


def publisher(port: int, offset: int):
    from vllm.distributed.kv_events import ZmqEventPublisher

    cfg = publisher_config("127.0.0.1", port, offset, 0)
    return ZmqEventPublisher(0, cfg["endpoint"], cfg["replay_endpoint"], topic=cfg["topic"])


async def until(cond, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


def publish(pub, *events) -> None:  # type: ignore[no-untyped-def]
    from vllm.distributed.kv_events import KVEventBatch

    pub.publish(KVEventBatch(ts=time.time(), events=list(events)))


@pytest.mark.anyio
async def test_real_publisher_replay_vanish_and_restart() -> None:
    port, offset = free_port(), 7
    assert subscriber_endpoints(f"http://127.0.0.1:{port}", offset)[0].endswith(str(port + 7))
    pub = publisher(port, offset)
    try:
        publish(pub, stored(CHAIN[:2], group=0, tokens=TOKENS[: 2 * B]))  # before anyone listens
        publish(pub, stored(CHAIN[2:4], group=0, parent=CHAIN[1]))
        rep = Watched(f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", _Health())
        index = KVIndex(lambda: [rep], offset)
        await index.start()
        try:
            view = index.views[rep.name]
            sub = index.subscribers[rep.name]
            await until(lambda: sub.connected, "connected")
            publish(pub, stored(CHAIN[4:5], group=0, parent=CHAIN[3]))
            # the first live batch (seq 2) makes it replay 0 and 1 from the ROUTER socket
            await until(lambda: view.last_seq == 2, "seq 2 applied")
            assert view.verified is True
            assert index.cached(TOKENS, [rep.name, "other"]) == {rep.name: 5 * B, "other": 0}
            pub.shutdown()
            await until(lambda: not sub.connected, "disconnect seen")
            assert len(view) == 0 and index.cached(TOKENS, [rep.name]) is None  # not live
            pub = publisher(port, offset)  # the engine restarted: a new publisher, seq from 0
            await until(lambda: sub.connected, "reconnected")
            await asyncio.sleep(0.3)  # a SUB's subscription reaches a new PUB asynchronously
            publish(pub, stored(CHAIN[:1], group=0, tokens=TOKENS[:B]))
            await until(lambda: view.last_seq == 0, "new instance's first batch")
            assert index.cached(TOKENS, [rep.name]) == {rep.name: B}
        finally:
            await index.stop()
    finally:
        pub.shutdown()


# -- the policy ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Fake:
    name: str
    inflight: int = 0
    cap: int = 8
    routable: bool = True
    saturated: bool = False

    @property
    def load(self) -> float:
        return float(self.inflight)


class Cache:
    def __init__(self, answer: dict[str, int] | None) -> None:
        self.answer = answer

    def cached(self, tokens, names):  # type: ignore[no-untyped-def]
        return None if self.answer is None else {n: self.answer.get(n, 0) for n in names}


def test_kv_picks_where_the_prompt_is_cached() -> None:
    a, b = Fake("a"), Fake("b", inflight=2)
    pol = KVCacheAware(Cache({"b": 1024}))
    req = Request("completions", {"prompt": "x"}, tokens=TOKENS)
    assert pol.pick(req, [a, b]) is b  # cached beats idle
    assert pol.decisions == {"kv": 1, "fallback": 0}
    b.inflight = 7  # past the load bound (1.25 x mean + 2): not chosen for its cache alone
    assert pol.pick(req, [a, b]) is a
    sched = build_scheduler("kv", Cache({"b": 1024}))
    assert sched.wants_tokens
    b.inflight, b.saturated = 0, True  # saturated: the HasRoom filter set it aside
    assert sched.pick(req, [a, b]) is a


def test_kv_falls_back_to_prefix() -> None:
    a, b = Fake("a"), Fake("b")
    for cache, tokens in ((Cache(None), TOKENS), (Cache({"a": 512}), None), (Cache({}), TOKENS)):
        pol = KVCacheAware(cache)
        req = Request("chat", {"messages": [{"role": "user", "content": "same prompt"}]},
                      tokens=tokens)  # fmt: skip
        first = pol.pick(req, [a, b])
        first.inflight += 1
        assert pol.pick(req, [a, b]) is first  # prefix affinity: a burst stays together
        first.inflight -= 1
        assert pol.decisions["kv"] == 0
    assert not build_scheduler("prefix").wants_tokens
    assert isinstance(build_scheduler("kv").picker, type(build_scheduler("prefix").picker))


def test_two_gateways_score_alike() -> None:
    """Two indexes fed the same stream (each gateway subscribes to every replica) agree."""
    views = [ReplicaBlocks(), ReplicaBlocks()]
    for seq, b in enumerate([gemma_stores(8), batch(removed([CHAIN[6]])), gemma_stores(4)]):
        for v in views:
            v.apply(seq, b)
    assert (
        views[0].cached_tokens(CHAIN, B, len(TOKENS))
        == views[1].cached_tokens(CHAIN, B, len(TOKENS))
        == 512
    )
