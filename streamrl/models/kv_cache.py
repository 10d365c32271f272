"""A preallocated static KV cache addressed by (slot, position), for batched decode.

Design: the cache holds `num_slots` independent sequences. Each sequence owns one slot, and the
key/value of its token at position p is stored at index p of that slot:

    k, v: [num_layers, num_slots, num_kv_heads, max_seq_len, head_dim]

A forward pass with a cache takes `tokens: [B, T]`, `positions: [B, T]` (each token's position
in its own sequence) and optionally `slots: [B]` (which slot each row belongs to; default row b
-> slot b). Every new token's k/v is written first, then each query at position p attends to
cache indices 0..p of its slot. Consequences:

- Sequences of different lengths need no left padding: each row carries its own positions. A
  prefill batch is right-padded; pad tokens get positions past their row's real length, write
  k/v there, and are overwritten by that row's later decode steps before anyone attends to
  them. Their outputs are garbage and the caller ignores them.
- A slot never needs clearing: a new sequence starting at position 0 can only see indices it
  has already written itself, so slots are reusable (continuous batching) at no cost.
- Writes never collide as long as positions within a row are distinct, so the scatter is
  deterministic.

Fresh prefill: when every row's positions are exactly 0..T-1 (new sequences, right-padded),
what a query may attend to is exactly the batch's own new k/v under a plain causal mask, so
attention skips the cache read and the explicit mask (`CacheStep.fresh`), and SDPA may pick a
flash kernel. The cache is still written for the decode steps that follow.

The engine's CUDA decode does not go through this class's read path: its Triton kernels write
and read the same `k`/`v` tensors directly (`producers/engine/cuda/`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from streamrl.models.config import ModelConfig


class KVCache:
    """Static k/v storage for `num_slots` sequences of up to `max_seq_len` tokens each."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_slots: int,
        max_seq_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_layers, num_slots, num_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len

    @classmethod
    def for_model(
        cls,
        config: ModelConfig,
        *,
        num_slots: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        if max_seq_len > config.max_position_embeddings:
            raise ValueError(
                f"max_seq_len ({max_seq_len}) exceeds the model's max_position_embeddings "
                f"({config.max_position_embeddings})"
            )
        return cls(
            num_layers=config.num_hidden_layers,
            num_slots=num_slots,
            max_seq_len=max_seq_len,
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            dtype=dtype,
            device=device,
        )

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
        # Contiguous leading slots can be read as a view instead of a gather.
        B = slots.shape[0]
        self.identity = bool(torch.equal(slots, torch.arange(B, device=slots.device)))

    def store(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Write the new tokens' k/v at their (slot, position)."""
        # k, v: [B, T, Hkv, D]
        k_all, v_all = self.cache.k[layer], self.cache.v[layer]  # [N, Hkv, S, D]
        # Advanced indices around a slice put [B, T] first: the target is [B, T, Hkv, D].
        rows = self.slots[:, None]
        k_all[rows, :, self.positions] = k.to(k_all.dtype)
        v_all[rows, :, self.positions] = v.to(v_all.dtype)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new k/v and return every cached k/v the batch's queries may attend to."""
        # k, v: [B, T, Hkv, D] -> returns k, v: [B, Hkv, kv_len, D]
        self.store(layer, k, v)
        k_all, v_all = self.cache.k[layer], self.cache.v[layer]  # [N, Hkv, S, D]
        if self.identity:
            B = self.slots.shape[0]
            return k_all[:B, :, : self.kv_len], v_all[:B, :, : self.kv_len]
        return k_all[self.slots, :, : self.kv_len], v_all[self.slots, :, : self.kv_len]

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
