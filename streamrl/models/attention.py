"""Grouped-query self-attention through torch SDPA, with the families' switches: per-head q/k
RMSNorm (`config.qk_norm`: Qwen3, GLM's `use_qk_norm`), q/k/v and o biases (`qkv_bias`,
`o_bias`), and GLM's partial rotary (cos/sin narrower than a head turn only its first dims, see
`layers.apply_rotary`). DeepSeek's multi-head latent attention is `mla.py`.

Who may attend to whom is decided by the caller as one boolean mask per forward (see
`segment_causal_mask` and `CacheStep.attention_mask`), so the same module serves packed
training batches and slot-addressed cached decode. A fresh prefill (`CacheStep.fresh`: every
row starts at position 0) writes the cache but attends causally over its own k/v, as training
does. A sliding window (Mistral) narrows both masks to the last `sliding_window` positions.
The engine's CUDA decode uses Triton kernels instead (`producers/engine/cuda/`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrl.models.config import ModelConfig
from streamrl.models.kv_cache import CacheStep
from streamrl.models.layers import RMSNorm, apply_rotary


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        H, D, bias = config.hidden_size, config.head_dim, config.qkv_bias
        self.q_proj = nn.Linear(H, self.num_heads * D, bias=bias)
        self.k_proj = nn.Linear(H, self.num_kv_heads * D, bias=bias)
        self.v_proj = nn.Linear(H, self.num_kv_heads * D, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * D, H, bias=config.o_bias)
        # Qwen3 normalizes each head's q and k before rotary (over head_dim only).
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if config.qk_norm:
            self.q_norm = RMSNorm(D, config.rms_norm_eps)
            self.k_norm = RMSNorm(D, config.rms_norm_eps)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: CacheStep | None = None,
    ) -> Tensor:
        # x: [B, T, hidden]; cos, sin: [B, T, D]
        # mask: [B, 1, T, S] bool (True = attend), or None for plain causal attention over x
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # [B, T, H*, D]
        if cache is not None and cache.fresh:
            # New sequences from position 0: the cache holds nothing they may see but their own
            # k/v, so attend over those causally (no cache read; no mask unless a sliding window
            # is shorter than the prompts, see `CacheStep.attention_mask`; flash-eligible).
            cache.store(self.layer_idx, k, v)
            cache = None
        if cache is None:
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, Hkv, T, D]
        else:
            k, v = cache.update(self.layer_idx, k, v)  # [B, Hkv, S, D]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # [B, Hq, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


def segment_causal_mask(positions: Tensor, window: int | None = None) -> Tensor | None:
    """Causal mask that also keeps packed sequences apart, derived from positions alone.

    A row may hold several sequences back to back; a new one starts wherever the position does
    not continue the previous token's (+1). A query attends to earlier-or-same tokens of its own
    segment. Right padding whose positions continue the row is harmless: it comes after every
    real token, so causality already hides it.

    With `window`, a query also sees only the tokens whose position is less than `window` before
    its own (Mistral's sliding window, transformers' `kv > q - window`).

    Returns None when no row is packed and no window cuts in (T <= window): plain causal
    attention needs no [T, T] mask, and SDPA's
    `is_causal` path keeps flash kernels available on GPU. Under torch.compile it always returns
    the mask (equal to plain causal when nothing is packed): the data-dependent check would
    break the graph.
    """
    # positions: [B, T] -> [B, 1, T, T] bool, or None
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    T = positions.shape[1]
    windowed = window is not None and window < T
    if not torch.compiler.is_compiling() and not windowed and not bool(starts[:, 1:].any()):
        return None
    segment = starts.long().cumsum(dim=1)  # [B, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=positions.device).tril()
    mask = (segment[:, :, None] == segment[:, None, :]) & causal  # [B, T, T]
    if window is not None:
        mask &= positions[:, None, :] > positions[:, :, None] - window
    return mask[:, None]
