"""Fused elementwise kernels of the decode step: one launch where the eager model takes several.

Each reproduces the eager model's rounding points (`streamrl/models/layers.py`): statistics in
fp32, a cast back to the model dtype before a norm's scale, bf16 results after every product and
sum that the eager bf16 code rounds. So the fused step differs from the eager one by reduction
order only, not by a different numeric recipe.

- `add_rmsnorm`: residual += delta (in place), then RMSNorm of the result: the residual add of
  one sub-layer and the norm of the next in one pass over [n, hidden].
- `qk_norm_rope_cache`: splits the fused qkv projection into heads, applies Qwen3's per-head
  q/k RMSNorm (skipped for families without it: no weights given) and rotary embedding,
  writes q for attention and k/v straight into the KV cache at each row's position (slot and
  position read on device).
- `silu_mul`: SwiGLU's silu(gate) * up from the fused gate-up projection.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _add_rmsnorm_kernel(
    X, Delta, W, Y, stride_x, stride_d, stride_y, eps,
    H: tl.constexpr, BLOCK_H: tl.constexpr, HAS_DELTA: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_H)
    mask = c < H
    x = tl.load(X + r * stride_x + c, mask=mask, other=0.0)
    if HAS_DELTA:
        delta = tl.load(Delta + r * stride_d + c, mask=mask, other=0.0)
        x = (x.to(tl.float32) + delta.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(X + r * stride_x + c, x, mask=mask)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, 0) / H + eps)
    y = (xf * inv).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + r * stride_y + c, (y * w).to(Y.dtype.element_ty), mask=mask)


def add_rmsnorm(x: Tensor, delta: Tensor | None, weight: Tensor, eps: float) -> Tensor:
    """x += delta in place (when given); returns RMSNorm(x) * weight as a new tensor."""
    # x, delta: [n, H] (last dim contiguous); weight: [H] -> [n, H]
    n, H = x.shape
    y = torch.empty_like(x)
    d = x if delta is None else delta
    _add_rmsnorm_kernel[(n,)](x, d, weight, y, x.stride(0), d.stride(0), y.stride(0), eps,
                              H=H, BLOCK_H=triton.next_power_of_2(H),
                              HAS_DELTA=delta is not None, num_warps=4)
    return y


@triton.jit
def _rotate(x1, x2, cos, sin, dtype: tl.constexpr):
    # The eager x * cos + rotate_half(x) * sin in the model dtype: each product and the sum round.
    a1 = (x1 * cos).to(dtype).to(tl.float32)
    b1 = (-x2 * sin).to(dtype).to(tl.float32)
    a2 = (x2 * cos).to(dtype).to(tl.float32)
    b2 = (x1 * sin).to(dtype).to(tl.float32)
    return (a1 + b1).to(dtype), (a2 + b2).to(dtype)


@triton.jit
def _qk_norm_rope_cache_kernel(
    QKV, QOut, KCache, VCache, Dest, Pos, QW, KW, InvFreq,
    stride_qkv, stride_qo, stride_ct, stride_ch, eps,
    HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)  # [0, HQ) q heads, [HQ, HQ + HKV) k heads, then v heads
    D = 2 * HALF
    i = tl.arange(0, BLOCK)
    mask = i < HALF
    src = QKV + r * stride_qkv + h * D
    x1 = tl.load(src + i, mask=mask, other=0.0)
    x2 = tl.load(src + HALF + i, mask=mask, other=0.0)
    dtype = x1.dtype
    dest = tl.load(Dest + r).to(tl.int64)  # the token's flat index in the paged pool
    pos = tl.load(Pos + r).to(tl.int64)
    if h >= HQ + HKV:
        dst = VCache + dest * stride_ct + (h - HQ - HKV) * stride_ch
        tl.store(dst + i, x1.to(VCache.dtype.element_ty), mask=mask)
        tl.store(dst + HALF + i, x2.to(VCache.dtype.element_ty), mask=mask)
    else:
        n1, n2 = x1.to(tl.float32), x2.to(tl.float32)
        if HAS_NORM:
            inv = tl.rsqrt((tl.sum(n1 * n1, 0) + tl.sum(n2 * n2, 0)) / D + eps)
            if h < HQ:
                w1 = tl.load(QW + i, mask=mask, other=0.0).to(tl.float32)
                w2 = tl.load(QW + HALF + i, mask=mask, other=0.0).to(tl.float32)
            else:
                w1 = tl.load(KW + i, mask=mask, other=0.0).to(tl.float32)
                w2 = tl.load(KW + HALF + i, mask=mask, other=0.0).to(tl.float32)
            n1 = ((n1 * inv).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
            n2 = ((n2 * inv).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
        angle = pos.to(tl.float32) * tl.load(InvFreq + i, mask=mask, other=0.0)
        cos = tl.cos(angle).to(dtype).to(tl.float32)
        sin = tl.sin(angle).to(dtype).to(tl.float32)
        o1, o2 = _rotate(n1, n2, cos, sin, dtype)
        if h < HQ:
            dst = QOut + r * stride_qo + h * D
        else:
            dst = KCache + dest * stride_ct + (h - HQ) * stride_ch
        tl.store(dst + i, o1, mask=mask)
        tl.store(dst + HALF + i, o2, mask=mask)


def qk_norm_rope_cache(
    qkv: Tensor, q_weight: Tensor | None, k_weight: Tensor | None, inv_freq: Tensor, eps: float,
    k_cache: Tensor, v_cache: Tensor, dest: Tensor, positions: Tensor, num_heads: int,
) -> Tensor:
    """Returns normalized, rotated q [n, Hq, D] (rotated by `positions`); writes k (normalized,
    rotated) and v of each row into the paged `k_cache`/`v_cache` at flat token index
    dest[row] (block * block_size + offset, `KVCache.addresses`). Without q/k norm weights
    (None, families without q/k norm) q and k are only rotated."""
    # qkv: [n, (Hq + 2 Hkv) D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D]
    # inv_freq: [D/2] fp32 (the eager RotaryEmbedding's); dest, positions: [n] int
    n = qkv.shape[0]
    Hkv, D = k_cache.shape[2], k_cache.shape[3]
    if (qkv.shape[1] != (num_heads + 2 * Hkv) * D or not k_cache.is_contiguous()
            or not v_cache.is_contiguous()):
        raise ValueError(f"qkv {list(qkv.shape)} does not match {num_heads} q heads and cache "
                         f"{list(k_cache.shape)}")
    if (q_weight is None) != (k_weight is None):
        raise ValueError("q and k norm weights come together or not at all")
    q = torch.empty(n, num_heads, D, dtype=qkv.dtype, device=qkv.device)
    has_norm = q_weight is not None
    _qk_norm_rope_cache_kernel[(n, num_heads + 2 * Hkv)](
        qkv, q, k_cache, v_cache, dest, positions, q_weight if has_norm else inv_freq,
        k_weight if has_norm else inv_freq, inv_freq,
        qkv.stride(0), q.stride(0), k_cache.stride(1), k_cache.stride(2), eps,
        HQ=num_heads, HKV=Hkv, HALF=D // 2, BLOCK=triton.next_power_of_2(D // 2),
        HAS_NORM=has_norm, num_warps=1,
    )
    return q


@triton.jit
def _silu_mul_kernel(GU, Out, stride_gu, stride_o, I: tl.constexpr, BLOCK: tl.constexpr):  # noqa: E741
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = c < I
    g = tl.load(GU + r * stride_gu + c, mask=mask, other=0.0)
    u = tl.load(GU + r * stride_gu + I + c, mask=mask, other=0.0).to(tl.float32)
    gf = g.to(tl.float32)
    s = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)
    tl.store(Out + r * stride_o + c, (s * u).to(Out.dtype.element_ty), mask=mask)


def silu_mul(gate_up: Tensor) -> Tensor:
    """silu(gate_up[:, :I]) * gate_up[:, I:] -> [n, I]."""
    n, I2 = gate_up.shape
    I = I2 // 2  # noqa: E741 - the usual name of the intermediate size
    out = torch.empty(n, I, dtype=gate_up.dtype, device=gate_up.device)
    block = min(1024, triton.next_power_of_2(I))
    _silu_mul_kernel[(n, triton.cdiv(I, block))](gate_up, out, gate_up.stride(0), out.stride(0),
                                                 I=I, BLOCK=block, num_warps=4)
    return out
