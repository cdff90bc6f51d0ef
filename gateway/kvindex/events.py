"""vLLM's KV-cache event batches, decoded as its publisher encodes them (msgpack via msgspec).

The publisher (``vllm/distributed/kv_events.py``, 0.32) sends three frames per batch:
``(topic, seq as 8 bytes big-endian, msgpack(KVEventBatch))``. The batch is an array
``[ts, events, data_parallel_rank]``; each event a map tagged by ``"type"`` (``BlockStored``,
``BlockRemoved``, ``AllBlocksCleared``). These structs name only the fields the index reads:
msgspec skips the others, and a field vLLM adds later changes nothing here. Anything that does
not decode is ``Malformed`` (the subscriber counts it and resets that replica's entries: a batch
it could not apply may have removed blocks).
"""

from __future__ import annotations

import msgspec


class Stored(msgspec.Struct, tag="BlockStored"):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None = None
    token_ids: list[int] = []
    block_size: int = 0
    medium: str | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class Removed(msgspec.Struct, tag="BlockRemoved"):
    block_hashes: list[int | bytes]
    medium: str | None = None
    group_idx: int | None = None


class Cleared(msgspec.Struct, tag="AllBlocksCleared"):
    pass


class Batch(msgspec.Struct, array_like=True):
    ts: float
    events: list[Stored | Removed | Cleared]
    data_parallel_rank: int | None = None


class Malformed(ValueError):
    """A message that is not a KV event batch (one line)."""


_decoder = msgspec.msgpack.Decoder(Batch)
END_SEQ = -1  # the replay socket's end marker (vLLM's ZmqEventPublisher.END_SEQ)


def decode(frames: list[bytes]) -> tuple[int, Batch]:
    """``(seq, batch)`` of one published message (three frames), or ``Malformed``."""
    if len(frames) != 3 or len(frames[1]) != 8:
        raise Malformed(f"expected (topic, 8-byte seq, payload), got {len(frames)} frames")
    seq = int.from_bytes(frames[1], "big", signed=True)
    try:
        batch = _decoder.decode(frames[2])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Malformed(f"seq {seq}: {exc}") from None
    for ev in batch.events:
        if isinstance(ev, Stored) and ev.block_size < 1:
            raise Malformed(f"seq {seq}: BlockStored with block size {ev.block_size}")
    return seq, batch
