"""Multi-head latent attention (MLA), DeepSeek-V2/V3's and Kimi K2's attention (`deepseek_v3`).

Per token, one down-projection `kv_a_proj_with_mqa` makes a latent c (width `kv_lora_rank`,
RMS-normalized by `kv_a_layernorm`) and one rotary key k_rot (width `qk_rope_head_dim`) shared
by every head; `kv_b_proj` up-projects c into each head's key part without rotary (k_nope) and
its value. A head's key is [k_nope | k_rot], its query [q_nope | q_rot] from `q_proj` or, with
`q_lora_rank`, `q_b_proj(q_a_layernorm(q_a_proj(x)))`. Parameter names are transformers'.

    q: [B, T, H, nope + rope]   latent = [c | rotated k_rot]: [B, T, kv_lora_rank + rope]
    k = [kv_b(c)_k | k_rot]     v = kv_b(c)_v: [B, S, H, v_head_dim]

What the cache holds is the latent alone, kv_lora_rank + qk_rope_head_dim numbers per token and
layer (`KVCache.for_model` lays it out as one "head" of that width, with no v pool): 576 for
DeepSeek-V3 against 128 heads x (192 + 128) = 40,960 for full per-head k/v.

Two ways to attend, equal in exact arithmetic (fp32 tests hold them within 1e-5):

- Up-projection (training, scoring, a fresh prefill): expand the latent into per-head k and v,
  as transformers does, and run SDPA.
- Absorption (a cached step: decode, or a prefill continuing a cached prefix): with
  W_k, W_v the per-head blocks of kv_b_proj, q·k_nope = (W_kᵀ q_nope)·c, and softmax(...)·v =
  W_v (softmax(...)·c). So each query is moved into latent space once, attention runs over the
  cached latent rows directly as one shared key/value head (value = the c part of a row; the
  heads are folded into the query rows, so no per-head copy of the cache is made either), and
  the per-head output is W_v of the result. Nothing of size [S, H, ·] is built per step.
  It needs kv_b_proj's weight as a plain matrix: a kv_b_proj wrapped by LoRA, fake
  quantization or FP8 up-projects instead (`absorb` is then False).

Rotary: with `rope_interleave` the checkpoint's rotary dims are pairs (2i, 2i + 1); they are
permuted to the rotate-half layout (evens, then odds) before rotation, which is bit for bit
what transformers computes, so cached k_rot rows are in rotate-half layout. The softmax scale
is 1/sqrt(nope + rope), times YaRN's m(factor, mscale_all_dim)² (`rope.mla_softmax_scale`).
The q_a/kv_a RMSNorms use eps 1e-6 whatever `rms_norm_eps` says, as transformers does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrl.models.config import ModelConfig
from streamrl.models.kv_cache import CacheStep
from streamrl.models.layers import RMSNorm, apply_rotary
from streamrl.models.rope import mla_softmax_scale

_LATENT_NORM_EPS = 1e-6
"""transformers builds q_a_layernorm and kv_a_layernorm with its RMSNorm's default eps."""


class MLAttention(nn.Module):
    """Multi-head latent attention; same call as `attention.Attention`, with cos/sin of width
    `qk_rope_head_dim`."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        assert config.kv_lora_rank is not None, "MLAttention needs kv_lora_rank (config.is_mla)"
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.kv_lora_rank = config.kv_lora_rank
        self.nope_dim = config.qk_nope_head_dim
        self.rope_dim = config.qk_rope_head_dim
        self.v_head_dim = config.v_head_dim
        self.interleave = config.rope_interleave
        H, heads, bias = config.hidden_size, config.num_attention_heads, config.attention_bias
        qk_dim = self.nope_dim + self.rope_dim
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(H, heads * qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(H, config.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, _LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(config.q_lora_rank, heads * qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, self.kv_lora_rank + self.rope_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, _LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, heads * (self.nope_dim + self.v_head_dim),
                                   bias=False)
        self.o_proj = nn.Linear(heads * self.v_head_dim, H, bias=bias)
        self.scale = mla_softmax_scale(qk_dim, config.rope_scaling)
        self.use_absorption = True
        """Attend over cached latents by absorbing kv_b_proj into q and o (module docstring);
        False: up-project the cached latents as training does (same numbers to rounding)."""

    @property
    def absorb(self) -> bool:
        """Whether a cached step attends in latent space (needs a plain kv_b_proj matrix)."""
        return self.use_absorption and type(self.kv_b_proj) is nn.Linear

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: CacheStep | None = None,
    ) -> Tensor:
        # x: [B, T, hidden]; cos, sin: [B, T, rope]
        # mask: [B, 1, T, S] bool (True = attend), or None for plain causal attention over x
        B, T, _ = x.shape
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_rot = q.view(B, T, self.num_heads, -1).split(
            [self.nope_dim, self.rope_dim], dim=-1)  # [B, T, H, nope], [B, T, H, rope]
        c, k_rot = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        c, k_rot = self.kv_a_layernorm(c), k_rot[:, :, None]  # [B, T, R], [B, T, 1, rope]
        if self.interleave:
            q_rot, k_rot = _deinterleave(q_rot), _deinterleave(k_rot)
        q_rot, k_rot = apply_rotary(q_rot, cos, sin), apply_rotary(k_rot, cos, sin)
        latent = torch.cat((c, k_rot[:, :, 0]), dim=-1)  # [B, T, R + rope]
        if cache is not None and cache.fresh:
            # New sequences from position 0 see only their own latents: store them for the
            # decode steps and attend as training does (see `attention.Attention`).
            cache.store_latent(self.layer_idx, latent)
            cache = None
        if cache is None:
            out = self._attend_expanded(q_nope, q_rot, latent, mask)
        else:
            latent = cache.update_latent(self.layer_idx, latent)  # [B, S, R + rope]
            out = (self._attend_absorbed(q_nope, q_rot, latent, mask) if self.absorb
                   else self._attend_expanded(q_nope, q_rot, latent, mask))
        return self.o_proj(out.reshape(B, T, self.num_heads * self.v_head_dim))

    def _attend_expanded(self, q_nope: Tensor, q_rot: Tensor, latent: Tensor,
                         mask: Tensor | None) -> Tensor:
        """Up-project the latents into per-head k and v (transformers' way)."""
        # q_nope: [B, T, H, nope]; q_rot: [B, T, H, rope]; latent: [B, S, R + rope]
        # -> [B, T, H, v]
        B, S, _ = latent.shape
        c, k_rot = latent.split([self.kv_lora_rank, self.rope_dim], dim=-1)
        k_nope, v = self.kv_b_proj(c).view(B, S, self.num_heads, -1).split(
            [self.nope_dim, self.v_head_dim], dim=-1)  # [B, S, H, nope], [B, S, H, v]
        k = torch.cat((k_nope, k_rot[:, :, None].expand(-1, -1, self.num_heads, -1)), dim=-1)
        q = torch.cat((q_nope, q_rot), dim=-1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=mask, is_causal=mask is None, scale=self.scale,
        )  # [B, H, T, v]
        return out.transpose(1, 2)

    def _attend_absorbed(self, q_nope: Tensor, q_rot: Tensor, latent: Tensor,
                         mask: Tensor | None) -> Tensor:
        """Attend in latent space: kv_b_proj's key half folded into q, its value half applied
        to the attended latent (module docstring)."""
        # q_nope: [B, T, H, nope]; q_rot: [B, T, H, rope]; latent: [B, S, R + rope]
        # -> [B, T, H, v]
        B, T, H, _ = q_nope.shape
        assert mask is not None or T == 1, "a cached step attends under its cache's mask"
        w = self.kv_b_proj.weight.view(H, self.nope_dim + self.v_head_dim, -1)
        w_k, w_v = w.split([self.nope_dim, self.v_head_dim], dim=1)  # [H, nope, R], [H, v, R]
        q_latent = torch.einsum("bthn,hnr->bthr", q_nope, w_k)  # [B, T, H, R]
        q = torch.cat((q_latent, q_rot), dim=-1)  # [B, T, H, R + rope]
        # One key/value head shared by every query head: fold the heads into the query rows
        # ([B, 1, T*H, .]) so attention reads each latent row once, with no per-head copy of
        # the cache (SDPA's enable_gqa would repeat it H times on its math path).
        kv = latent[:, None]  # [B, 1, S, R + rope]
        if mask is not None:
            mask = mask[:, :, :, None].expand(-1, -1, -1, H, -1).reshape(B, 1, T * H, -1)
        out = F.scaled_dot_product_attention(
            q.reshape(B, 1, T * H, -1), kv, kv[..., : self.kv_lora_rank],
            attn_mask=mask, scale=self.scale,
        )  # [B, 1, T*H, R]
        return torch.einsum("bthr,hvr->bthv", out.view(B, T, H, -1), w_v)


def _deinterleave(x: Tensor) -> Tensor:
    """Pairs (2i, 2i + 1) -> (i, i + D/2): the rotate-half layout of interleaved rotary dims."""
    # x: [..., D] -> [..., D]
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)
