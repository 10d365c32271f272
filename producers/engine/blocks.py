"""`BlockPool`: which KV-cache blocks are free, how many sequences hold each one, and which
finished blocks are kept for reuse (the prefix cache).

Host-side only (plain ints and bytes, no device work). Block 0 is never handed out: it is the
scratch block that idle rows of a fixed-shape decode step and right-padding of a prefill batch
write into, so those writes never land in a block that holds someone's k/v. A block shared by
the samples of one prompt is held once per sample.

A block nobody holds any more either becomes free, or, if it was registered under a key
(`register`: its every position's k/v is final), stays as it is and becomes *evictable*: a
later request whose tokens hash to the same key holds it again (`lookup`, `hold`) instead of
recomputing it. Evictable blocks count as free: `allocate` takes truly free blocks first, then
reclaims evictable ones, least recently released first. A key is a hash chain
(`chain_keys`): block i's key covers every token of blocks 0..i, so a match of block i implies
the whole prefix before it matches too.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

SCRATCH = 0
"""The block id that free block-table entries point at."""


def chain_keys(tokens: np.ndarray, salt: bytes, block_size: int, num_blocks: int,
               known: list[bytes] | tuple[()] = ()) -> list[bytes]:
    """Keys of the first `num_blocks` full blocks of `tokens`: key i = hash(key i-1, block i's
    token ids), key -1 = `salt` (what else changes the k/v, e.g. a LoRA adapter's id).
    `known`: keys already computed for a prefix of `tokens`, reused."""
    ids = np.ascontiguousarray(tokens[: num_blocks * block_size], dtype=np.int32)
    keys = list(known[:num_blocks])
    parent = keys[-1] if keys else salt
    for i in range(len(keys), num_blocks):
        h = hashlib.blake2b(parent, digest_size=16)
        h.update(ids[i * block_size:(i + 1) * block_size].tobytes())
        parent = h.digest()
        keys.append(parent)
    return keys


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"a block pool needs the scratch block and one more, got {num_blocks}")
        self._free = list(range(num_blocks - 1, 0, -1))  # a stack: low ids first
        self._refs = [0] * num_blocks
        self._evictable: OrderedDict[int, None] = OrderedDict()  # held by nobody, registered
        self._key_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self.num_blocks = num_blocks

    @property
    def num_free(self) -> int:
        """Blocks `allocate` can hand out: free ones and evictable cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        """Blocks registered in the prefix cache (held or evictable)."""
        return len(self._block_of)

    def allocate(self, n: int) -> list[int] | None:
        """`n` fresh blocks held once each, or None (nothing taken) if fewer are free. Takes
        free blocks first, then evicts cached ones nobody holds, least recently released
        first."""
        if n > self.num_free:
            return None
        blocks = []
        for _ in range(n):
            if self._free:
                b = self._free.pop()
            else:
                b, _ = self._evictable.popitem(last=False)
                del self._block_of[self._key_of.pop(b)]
            self._refs[b] = 1
            blocks.append(b)
        return blocks

    def hold(self, blocks: list[int]) -> None:
        """One more holder for each of `blocks` (held by someone, or cached and evictable)."""
        for b in blocks:
            if self._refs[b] == 0:
                assert b in self._evictable, f"block {b} is free"
                del self._evictable[b]
            self._refs[b] += 1

    def release(self, blocks: list[int]) -> None:
        """One holder fewer for each of `blocks`; those nobody holds any more become free, or
        evictable if registered. Released last block first, so that eviction takes a chain's
        tail before its head (the head is what more requests share)."""
        for b in reversed(blocks):
            assert self._refs[b] > 0, f"block {b} released more often than held"
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if b in self._key_of:
                    self._evictable[b] = None
                else:
                    self._free.append(b)

    def register(self, blocks: list[int], keys: list[bytes]) -> None:
        """Cache held `blocks` under `keys` (k/v final in every position). A key already cached
        keeps its block; a block already cached keeps its key."""
        for b, key in zip(blocks, keys, strict=False):
            assert self._refs[b] > 0, f"block {b} is not held"
            if key not in self._block_of and b not in self._key_of:
                self._block_of[key], self._key_of[b] = b, key

    def lookup(self, keys: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `keys` (not held by this call)."""
        blocks = []
        for key in keys:
            b = self._block_of.get(key)
            if b is None:
                break
            blocks.append(b)
        return blocks

    def clear_cache(self) -> None:
        """Forget every key: evictable blocks become free, held ones are freed on release."""
        self._free.extend(reversed(self._evictable))
        self._evictable.clear()
        self._key_of.clear()
        self._block_of.clear()
