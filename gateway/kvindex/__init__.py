"""What each engine replica really holds in its prefix cache, from vLLM's KV-cache events.

The engines publish every block they store or evict (``ENGINE_KV_EVENTS=on``, vLLM's
``--kv-events-config``; ``env/kvevents.py`` says where); this package keeps, per replica, the
set of block hashes it holds, and answers "how many leading tokens of this prompt would replica
R serve from cache" for the ``kv`` routing policy (``gateway/routing/kv.py``).

- ``events``: the wire format (msgpack batches, decoded with msgspec as vLLM encodes them);
- ``hashing``: the engine's block hashes of a prompt's token ids, computed here;
- ``index``: the pure per-replica view (sequence order, groups, the cache-hit rule, bounds);
- ``subscriber``: one ZMQ subscription per replica (gaps replayed, restarts and vanished
  publishers reset);
- ``fleet``: ``KVIndex``, the subscribers following the replica set, and the lookup.
"""

from __future__ import annotations

from gateway.kvindex.fleet import KVIndex, hash_algo

__all__ = ["KVIndex", "hash_algo"]
