"""The W4A16 matmul on GPU: y = x @ dequant(qweight, scales)^T with the int4 weights unpacked
and scaled inside each K tile, so the weight is read from memory as 4 bits (+ one fp32 scale per
group) and never materialized in 16 bits. Layout and arithmetic: streamrl/models/quant.py
(two's-complement nibbles, low nibble = even column; w = q * s computed in fp32, then cast to
x's dtype, so it equals the torch path's dequantized weight exactly).

Without a GPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set before this
module is imported), which is how tests/models/test_int4.py checks it on CPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _w4a16_kernel(X, Q, S, Y, M, N, K, stride_xm, stride_qn, stride_sn, stride_ym,
                  GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + rm[:, None] * stride_xm + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        wmask = (rn[:, None] < N) & (rk[None, :] < K)
        byte = tl.load(Q + rn[:, None] * stride_qn + rk[None, :] // 2, mask=wmask, other=0)
        nib = (byte.to(tl.int32) >> ((rk[None, :] % 2) * 4)) & 0xF
        q = (nib ^ 8) - 8
        s = tl.load(S + rn[:, None] * stride_sn + rk[None, :] // GROUP, mask=wmask, other=0.0)
        w = (q.to(tl.float32) * s).to(X.dtype.element_ty)  # [BLOCK_N, BLOCK_K]
        if DOT_FP32:  # the interpreter's dot takes 16-bit floats for their raw bits
            acc += tl.dot(x.to(tl.float32), tl.trans(w).to(tl.float32))
        else:
            acc += tl.dot(x, tl.trans(w))
    tl.store(Y + rm[:, None] * stride_ym + rn[None, :], acc.to(Y.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def w4a16_matmul(x: Tensor, qweight: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """x [M, K] (bf16/fp16/fp32) @ W^T with W [N, K] held as qweight uint8 [N, K/2] and scales
    fp32 [N, K/group_size]; returns [M, N] in x's dtype, accumulated in fp32."""
    x, q, s = x.contiguous(), qweight.contiguous(), scales.float().contiguous()
    M, K = x.shape
    N = qweight.shape[0]
    if qweight.shape[1] * 2 != K or scales.shape != (N, K // group_size):
        raise ValueError(f"w4a16: x {list(x.shape)}, qweight {list(qweight.shape)} and scales "
                         f"{list(scales.shape)} do not fit group_size {group_size}")
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    block_m = 16 if M <= 16 else 64
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, 64))
    _w4a16_kernel[grid](x, q, s, y, M, N, K, x.stride(0), q.stride(0), s.stride(0), y.stride(0),
                        GROUP=group_size, BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=64,
                        DOT_FP32=os.environ.get("TRITON_INTERPRET") == "1")
    return y
