"""`BlockPool`: which KV-cache blocks are free and how many sequences hold each one.

Host-side only (plain ints, no device work). Block 0 is never handed out: it is the scratch
block that idle rows of a fixed-shape decode step and right-padding of a prefill batch write
into, so those writes never land in a block that holds someone's k/v. A block shared by the
samples of one prompt is held once per sample and returns to the free list when the last one
lets go.
"""

from __future__ import annotations

SCRATCH = 0
"""The block id that free block-table entries point at."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"a block pool needs the scratch block and one more, got {num_blocks}")
        self._free = list(range(num_blocks - 1, 0, -1))  # a stack: low ids first
        self._refs = [0] * num_blocks
        self.num_blocks = num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """`n` fresh blocks held once each, or None (nothing taken) if fewer are free."""
        if n > len(self._free):
            return None
        blocks = [self._free.pop() for _ in range(n)]
        for b in blocks:
            self._refs[b] = 1
        return blocks

    def hold(self, blocks: list[int]) -> None:
        """One more holder for each of `blocks` (already held by someone)."""
        for b in blocks:
            assert self._refs[b] > 0, f"block {b} is free"
            self._refs[b] += 1

    def release(self, blocks: list[int]) -> None:
        """One holder fewer for each of `blocks`; those nobody holds any more become free."""
        for b in blocks:
            assert self._refs[b] > 0, f"block {b} released more often than held"
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)
