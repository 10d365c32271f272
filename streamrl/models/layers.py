"""Building blocks shared by every decoder family: RMSNorm, rotary embedding, SwiGLU MLP.

Numerics follow the transformers math exactly (norm statistics in fp32, rotary angles in fp32
from integer positions) so fp32 logits match transformers to float rounding, and bf16 runs later
round at the same places.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrl.models.rope import RopeScaling, inverse_frequencies, rope_attention_factor


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), statistics in fp32, over the last dim."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        # Cast back before the scale, as the reference does, so bf16 rounds at the same point.
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embedding, computed from per-token positions.

    Angles are computed on the fly from `positions` instead of a precomputed table: it costs
    head_dim/2 multiplies per token, keeps no state (so meta-device construction needs no
    re-init) and works for any position layout (left/right padding, packing, per-slot decode).
    `head_dim` is the rotated width: the whole head, GLM's `rotary_dim` (partial rotary) or
    MLA's `qk_rope_head_dim`.
    """

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.scaling = scaling

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # positions: [B, T] int -> cos, sin: [B, T, head_dim]
        inv_freq = inverse_frequencies(self.head_dim, self.theta, self.scaling,
                                       positions.device)  # [D/2]
        angles = positions.float()[..., None] * inv_freq  # [B, T, D/2]
        angles = torch.cat((angles, angles), dim=-1)  # [B, T, D]
        factor = rope_attention_factor(self.scaling)  # YaRN's cos/sin scale, else 1
        if factor != 1.0:
            return (angles.cos() * factor).to(dtype), (angles.sin() * factor).to(dtype)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (i, i + d/2) of each head by the token's angle (the "rotate half" layout),
    d the width of cos/sin. When d < D (partial rotary, GLM), only the first d dims of each head
    turn, paired among themselves, and the rest pass unchanged, as transformers' glm4_moe does."""
    # x: [B, T, H, D]; cos, sin: [B, T, d], d <= D
    d = cos.shape[-1]
    if d < x.shape[-1]:
        return torch.cat((apply_rotary(x[..., :d], cos, sin), x[..., d:]), dim=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Parameter names match HF checkpoints."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., hidden] -> [..., hidden]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
