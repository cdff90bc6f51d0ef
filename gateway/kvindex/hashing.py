"""The engine's block hashes of a prompt, computed in the gateway: what the index is keyed by.

vLLM's prefix cache (``vllm/v1/core/kv_cache_utils.py``, 0.32) names a full block of
``block_size`` tokens by a hash chained over the whole prefix::

    h_0 = NONE_HASH;  h_i = hash_fn((h_{i-1}, tuple(block_i_token_ids), extra_keys))

- ``hash_fn``: ``--prefix-caching-hash-algo`` (default ``sha256``: SHA-256 of the pickled
  tuple, ``vllm/utils/hashing.py``; ``sha256_cbor``: SHA-256 of canonical CBOR). ``xxhash``
  variants seed ``NONE_HASH`` with random bytes per process unless ``PYTHONHASHSEED`` is set:
  then nothing outside the engine can reproduce them, and this module refuses them.
- ``NONE_HASH = hash_fn(seed)``, seed ``PYTHONHASHSEED`` if the engine has it, else the fixed
  ``"vllm-none-hash"``;
- ``extra_keys`` is None for a text-only request without LoRA, ``cache_salt`` or prompt
  embeddings (multimodal placeholders and salts change it: such requests are not predicted);
- the events carry ``int.from_bytes(h, "big") & (2**64 - 1)`` (``maybe_convert_block_hash``
  with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, vLLM's default), the chain uses the bytes.

Pickle is deterministic for a tuple of (bytes, tuple of ints, None) at one protocol
(``HIGHEST_PROTOCOL``, 5 on the engine's Python 3.11 and here). ``tests/gateway/
test_kvindex.py`` checks this module against vLLM's own ``hash_block_tokens``. Cost: a few
microseconds per block (``python -m bench kvrouting`` prints it per request).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_SEED = "vllm-none-hash"
_MASK = (1 << 64) - 1
HashFn = Callable[[Any], bytes]


class HashingError(ValueError):
    """A hash configuration nothing outside the engine can reproduce (one line)."""


def _sha256(value: Any) -> bytes:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def _sha256_cbor(value: Any) -> bytes:
    import cbor2  # only with --prefix-caching-hash-algo sha256_cbor (vLLM installs it)

    return hashlib.sha256(cbor2.dumps(value, canonical=True)).digest()


ALGOS: dict[str, HashFn] = {"sha256": _sha256, "sha256_cbor": _sha256_cbor}


class BlockHasher:
    """Block hashes of token ids as the engine computes them (``int_hashes``: as published)."""

    def __init__(
        self,
        block_size: int,
        algo: str = "sha256",
        seed: str | None = None,
        int_hashes: bool = True,
    ) -> None:
        if algo not in ALGOS:
            raise HashingError(
                f"prefix-caching hash {algo!r} cannot be reproduced outside the engine "
                f"(one of {', '.join(ALGOS)})"
            )
        if block_size < 1:
            raise HashingError(f"block size {block_size} < 1")
        self.block_size = block_size
        self.fn = ALGOS[algo]
        self.none_hash = self.fn(DEFAULT_SEED if seed is None else seed)
        self.int_hashes = int_hashes

    def hashes(self, tokens: Sequence[int], limit: int | None = None) -> list[int | bytes]:
        """The published hash of every full block of ``tokens`` (at most ``limit`` blocks)."""
        b = self.block_size
        n = len(tokens) // b if limit is None else min(limit, len(tokens) // b)
        parent = self.none_hash
        out: list[int | bytes] = []
        for i in range(n):
            parent = self.fn((parent, tuple(tokens[i * b : (i + 1) * b]), None))
            out.append(int.from_bytes(parent, "big") & _MASK if self.int_hashes else parent)
        return out
