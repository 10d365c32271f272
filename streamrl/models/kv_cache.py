"""A paged KV cache: k/v in fixed-size blocks of one pool per layer, addressed through
per-sequence block tables, for batched prefill and decode.

    k, v: [num_layers, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: [num_slots, max_blocks_per_seq] int64 block ids, on the cache's device

Sequence slot s keeps the k/v of its token at position p in block `block_tables[s, p // bs]`
at offset `p % bs` (bs = block_size). Who owns which block is the caller's business: the
rollout engine hands blocks out from a free list, shares a prompt's blocks between the samples
of a group and takes them back on preemption (`producers/engine/blocks.py`); `for_model`
without `num_blocks` gives every slot its own contiguous run of blocks, a static cache with
the same behaviour (used by evaluation scripts and tests).

A forward pass with a cache takes `tokens: [B, T]`, `positions: [B, T]` (each token's position
in its own sequence) and optionally `slots: [B]` (default row b -> slot b). Every new token's
k/v is written first, then each query at position p attends to positions 0..p of its slot,
gathered through the block table. Consequences:

- Sequences of different lengths need no left padding: each row carries its own positions. A
  prefill batch is right-padded; pad tokens write k/v at positions past their row's end (in
  the row's own blocks, or where the table holds the caller's scratch block), which the row
  overwrites before anyone attends to them. Their outputs are garbage and the caller ignores
  them.
- A block never needs clearing: a sequence only attends to positions it has written itself
  (or, for a shared prompt, that its group's first sample wrote).
- Writes never collide as long as positions within a row are distinct and rows do not share
  a block they write (the engine shares only full prompt blocks, written once before sharing).

Multi-head latent attention (`config.is_mla`, `mla.py`) caches per token and layer only its
latent row [c | k_rot] (kv_lora_rank + qk_rope_head_dim numbers, shared by every head): the
k pool holds it as one "head" of that width and the v pool has width 0, so blocks, block tables,
prefix sharing and copy-on-write work unchanged, and `bytes_per_block` counts latent bytes only.
MLA layers go through `CacheStep.store_latent` / `update_latent` instead of `store` / `update`.

Fresh prefill: when every row's positions are exactly 0..T-1 (new sequences, right-padded),
what a query may attend to is exactly the batch's own new k/v under a plain causal mask, so
attention skips the cache read and the explicit mask (`CacheStep.fresh`), and SDPA may pick a
flash kernel. The cache is still written for the decode steps that follow.

The engine's fused CUDA decode does not go through `CacheStep`: its Triton kernels write and
read the same pool through the same block tables (`producers/engine/cuda/`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from streamrl.models.config import ModelConfig


class KVCache:
    """Paged k/v storage for `num_slots` sequences of up to `max_seq_len` tokens each, in a pool
    of `num_blocks` blocks of `block_size` tokens."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_slots: int,
        max_seq_len: int,
        num_kv_heads: int,
        head_dim: int,
        v_head_dim: int | None = None,
        num_blocks: int | None = None,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.blocks_per_seq = -(-max_seq_len // block_size)
        static = num_blocks is None
        if num_blocks is None:
            num_blocks = num_slots * self.blocks_per_seq
        shape = (num_layers, num_blocks, block_size, num_kv_heads)
        self.k = torch.zeros(*shape, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros(*shape, head_dim if v_head_dim is None else v_head_dim,
                             dtype=dtype, device=device)  # width 0: a latent (MLA) cache
        self.block_tables = torch.zeros(num_slots, self.blocks_per_seq, dtype=torch.int64,
                                        device=device)  # [num_slots, max_blocks_per_seq]
        if static:  # slot s owns blocks s * blocks_per_seq ... (s + 1) * blocks_per_seq - 1
            self.block_tables.copy_(torch.arange(num_blocks, device=device).view(num_slots, -1))
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.num_blocks = num_blocks
        self.block_size = block_size

    @classmethod
    def for_model(
        cls,
        config: ModelConfig,
        *,
        num_slots: int,
        max_seq_len: int,
        num_blocks: int | None = None,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        """A cache shaped for `config`. Without `num_blocks`, each slot owns blocks for
        `max_seq_len` tokens (a static cache); with it, the block tables start all zero and the
        caller assigns blocks. An MLA model's cache holds latent rows (module docstring)."""
        if max_seq_len > config.max_position_embeddings:
            raise ValueError(
                f"max_seq_len ({max_seq_len}) exceeds the model's max_position_embeddings "
                f"({config.max_position_embeddings})"
            )
        return cls(
            num_layers=config.num_hidden_layers,
            num_slots=num_slots,
            max_seq_len=max_seq_len,
            **_token_layout(config),
            num_blocks=num_blocks,
            block_size=block_size,
            dtype=dtype,
            device=device,
        )

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        """k and v (MLA: the latent rows) of one block over all layers."""
        elem = torch.empty((), dtype=dtype).element_size()
        layout = _token_layout(config)
        per_token = layout["num_kv_heads"] * (layout["head_dim"] + layout["v_head_dim"])
        return config.num_hidden_layers * block_size * per_token * elem

    def addresses(self, slots: Tensor, positions: Tensor) -> Tensor:
        """Flat token index (block * block_size + offset) of each (slot, position)."""
        # slots: [B]; positions: [B, T] -> [B, T] int64
        bs = self.block_size
        blocks = self.block_tables[slots[:, None], positions // bs]
        return blocks * bs + positions % bs

    def flat(self, layer: int) -> tuple[Tensor, Tensor]:
        """Layer `layer`'s k and v pools as [num_blocks * block_size, Hkv, D] views."""
        k, v = self.k[layer], self.v[layer]
        n = self.num_blocks * self.block_size  # explicit: an MLA cache's v has no elements
        return k.view(n, *k.shape[2:]), v.view(n, *v.shape[2:])

    def copy_blocks(self, src: Tensor, dst: Tensor) -> None:
        """Copy blocks `src` onto blocks `dst` in every layer (copy-on-write of shared prefixes)."""
        # src, dst: [n] block ids
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]

    def step(self, positions: Tensor, slots: Tensor | None, kv_len: int | None = None) -> CacheStep:
        """Bind one forward pass's rows to their slots; checks positions fit the cache."""
        # positions: [B, T]; slots: [B] or None (row b -> slot b)
        B = positions.shape[0]
        if slots is None:
            if self.num_slots < B:
                raise ValueError(f"batch of {B} rows but the cache has {self.num_slots} slots")
            slots = torch.arange(B, device=positions.device)
        elif slots.shape != (B,):
            raise ValueError(f"slots must have shape [{B}], got {list(slots.shape)}")
        if kv_len is None:
            lo, hi = int(positions.min()), int(positions.max())
            if lo < 0 or hi >= self.max_seq_len:
                raise ValueError(
                    f"positions must lie in [0, {self.max_seq_len}) for this cache, "
                    f"got [{lo}, {hi}]"
                )
            kv_len = hi + 1
            T = positions.shape[1]
            fresh = T > 1 and lo == 0 and bool(
                (positions == torch.arange(T, device=positions.device)).all()
            )
        else:
            fresh = False
        return CacheStep(self, slots.long(), positions.long(), kv_len, fresh=fresh)


def _token_layout(config: ModelConfig) -> dict[str, int]:
    """What one token of one layer keeps: per-head k and v, or MLA's one latent row."""
    if config.kv_lora_rank is not None:  # config.is_mla
        return {"num_kv_heads": 1, "head_dim": config.kv_lora_rank + config.qk_rope_head_dim,
                "v_head_dim": 0}
    return {"num_kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
            "v_head_dim": config.head_dim}


class CacheStep:
    """One forward pass's view of the cache: what attention layers call to store and read k/v."""

    def __init__(
        self, cache: KVCache, slots: Tensor, positions: Tensor, kv_len: int, *, fresh: bool = False
    ) -> None:
        self.cache = cache
        self.slots = slots  # [B]
        self.positions = positions  # [B, T]
        self.kv_len = kv_len
        self.fresh = fresh
        """Every row's positions are 0..T-1: attend causally over the new k/v (`store`)."""
        self.dest = cache.addresses(slots, positions)  # [B, T] where the new k/v go
        self._read: Tensor | None = None  # [B, kv_len] addresses of positions 0..kv_len-1

    def store(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Write the new tokens' k/v at their (slot, position)."""
        # k, v: [B, T, Hkv, D]
        k_all, v_all = self.cache.flat(layer)  # [N * bs, Hkv, D]
        k_all[self.dest] = k.to(k_all.dtype)
        v_all[self.dest] = v.to(v_all.dtype)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new k/v and return every cached k/v the batch's queries may attend to."""
        # k, v: [B, T, Hkv, D] -> returns k, v: [B, Hkv, kv_len, D]
        self.store(layer, k, v)
        k_all, v_all = self.cache.flat(layer)
        read = self._read_addresses()
        return k_all[read].transpose(1, 2), v_all[read].transpose(1, 2)

    def store_latent(self, layer: int, latent: Tensor) -> None:
        """MLA: write the new tokens' latent rows at their (slot, position)."""
        # latent: [B, T, kv_lora_rank + qk_rope_head_dim]
        k_all, _ = self.cache.flat(layer)  # [N * bs, 1, W]
        k_all[self.dest] = latent[:, :, None].to(k_all.dtype)

    def update_latent(self, layer: int, latent: Tensor) -> Tensor:
        """MLA: store the new latent rows and return every row the batch's queries may see."""
        # latent: [B, T, W] -> [B, kv_len, W]
        self.store_latent(layer, latent)
        k_all, _ = self.cache.flat(layer)
        return k_all[self._read_addresses(), 0]

    def _read_addresses(self) -> Tensor:
        """[B, kv_len] addresses of positions 0..kv_len-1 of each row's slot (built once)."""
        if self._read is None:
            B = self.slots.shape[0]
            j = torch.arange(self.kv_len, device=self.slots.device).expand(B, -1)
            self._read = self.cache.addresses(self.slots, j)
        return self._read

    def attention_mask(self, window: int | None = None) -> Tensor | None:
        """True where a query may attend: cache index j <= the query's position (and, with a
        sliding `window`, j > position - window). A fresh prefill attends over its own k/v:
        None (plain causal), or with a window shorter than the prompts a [B, 1, T, T] mask."""
        # -> [B, 1, T, kv_len] bool, or None
        if self.fresh:
            T = self.positions.shape[1]
            if window is None or window >= T:
                return None
            i = torch.arange(T, device=self.positions.device)
            return ((i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window))[None, None]
        j = torch.arange(self.kv_len, device=self.positions.device)[None, None, :]
        mask = j <= self.positions[:, :, None]
        if window is not None:
            mask &= j > self.positions[:, :, None] - window
        return mask[:, None]
