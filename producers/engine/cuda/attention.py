"""Split-K decode attention over the paged KV cache, reading each sequence's length and block
table on device.

One query token per sequence attends to positions [0, length) of its sequence, found through
its block table (`streamrl/models/kv_cache.py`: position p lives in block table[p // bs] at
offset p % bs), nothing more: the work per sequence follows its actual length instead of
`max_seq_len`, and since lengths and tables are read from device tensors the launch has fixed
shapes and a CUDA graph can capture it. Grid: (sequence, kv head, split). One program serves
all query heads of a GQA group, so each k/v tile is read from memory once per group; it walks
its split of the sequence in tiles of BLOCK_N positions (each position's block looked up in
the table) with an online softmax (flash-decoding). With one split the program writes the
output directly; with several, a second small kernel merges the splits' partial results by
their log-sum-exp.

Splits exist for small batches: at batch 128 x 8 kv heads there are already ~8 programs per
SM, so one split avoids the merge; at batch 1 the sequence is cut into pieces to fill the GPU.

    out = decode_attention(q, k_cache, v_cache, tables, rows, lengths)   # q: [n, Hq, D]
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from streamrl.producers.engine.cuda import INTERPRET

# Swept on an H100 at batch 128, head_dim 128, context 256 (bench/engine_throughput.py): BLOCK_N
# 64 and 128 with 4 warps, 2 stages both ran 0.059 ms per layer, 77% of the device-copy bandwidth.
CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
# Triton's CPU interpreter (tests without a GPU) mis-computes bf16 `tl.dot`: give it fp32 operands.


@triton.jit
def _decode_attention_kernel(
    Q, K, V, Tables, Rows, Lengths, Out, PartAcc, PartML,
    stride_qb, stride_qh, stride_tb, stride_kt, stride_kh, stride_ob, stride_oh,
    scale_log2,
    BS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    b = tl.program_id(0)
    g = tl.program_id(1)
    split = tl.program_id(2)
    table = Tables + tl.load(Rows + b).to(tl.int64) * stride_tb
    length = tl.load(Lengths + b).to(tl.int32)
    # Each split takes an equal share of this sequence's own length, in whole blocks.
    chunk = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, length)

    r = tl.arange(0, GROUP_PAD)
    heads = g * GROUP + r  # [G] query heads of this kv head
    d = tl.arange(0, BLOCK_D)
    hmask = r < GROUP
    dmask = d < D
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=hmask[:, None] & dmask[None, :], other=0.0)  # [G, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)

    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    ll = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        t = start + tl.arange(0, BLOCK_N)
        tmask = t < hi
        block = tl.load(table + t // BS, mask=tmask, other=0).to(tl.int64)  # [N]
        addr = block * BS + t % BS  # [N] flat token index in the pool
        offs = addr[:, None] * stride_kt + g * stride_kh + d[None, :]
        lmask = tmask[:, None] & dmask[None, :]
        k = tl.load(K + offs, mask=lmask, other=0.0)  # [N, BLOCK_D]
        v = tl.load(V + offs, mask=lmask, other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [G, N]
        s = tl.where(tmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        ll = ll * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new

    if SPLITS == 1:
        out = acc / ll[:, None]
        tl.store(Out + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 out.to(Out.dtype.element_ty), mask=hmask[:, None] & dmask[None, :])
    else:
        # Partials: acc [n, Hq, SPLITS, D] and (max, sum) [n, Hq, SPLITS, 2], fp32, contiguous.
        row = (b * (tl.num_programs(1) * GROUP) + heads) * SPLITS + split  # [G]
        tl.store(PartAcc + row[:, None] * D + d[None, :], acc,
                 mask=hmask[:, None] & dmask[None, :])
        tl.store(PartML + row * 2, m, mask=hmask)
        tl.store(PartML + row * 2 + 1, ll, mask=hmask)


@triton.jit
def _merge_splits_kernel(
    PartAcc, PartML, Out, stride_ob, stride_oh,
    D: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    row = (b * tl.num_programs(1) + h) * SPLITS + tl.arange(0, SPLITS)  # [SPLITS]
    m = tl.load(PartML + row * 2)
    ll = tl.load(PartML + row * 2 + 1)
    d = tl.arange(0, BLOCK_D)
    acc = tl.load(PartAcc + row[:, None] * D + d[None, :], mask=d[None, :] < D, other=0.0)
    top = tl.max(m, 0)
    w = tl.exp2(m - top)  # empty splits have m = -inf: weight 0
    out = tl.sum(acc * w[:, None], 0) / tl.sum(ll * w, 0)
    tl.store(Out + b * stride_ob + h * stride_oh + d, out.to(Out.dtype.element_ty), mask=d < D)


def num_splits(num_rows: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """Splits per sequence so that about two programs per SM exist (a power of two, at most
    one per 256 positions of the cache, at most 16)."""
    want = -(-2 * num_sms // (num_rows * num_kv_heads))
    cap = max(1, min(16, max_seq_len // 256))
    return 1 << (min(want, cap) - 1).bit_length() if want > 1 else 1


def decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, tables: Tensor, rows: Tensor, lengths: Tensor,
    *, splits: int = 1, out: Tensor | None = None,
) -> Tensor:
    """Softmax(q k^T / sqrt(D)) v for one query per row over positions [0, lengths[row]) of the
    sequence whose block table is `tables[rows[row]]`. Every length must be >= 1 (a row's own
    token is always cached)."""
    # q: [n, Hq, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D] (contiguous)
    # tables: [num_slots, max_blocks_per_seq] int; rows, lengths: [n] int -> out: [n, Hq, D]
    n, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    if (Hq % Hkv or k_cache.shape != v_cache.shape or not k_cache.is_contiguous()
            or not v_cache.is_contiguous() or q.stride(-1) != 1):
        raise ValueError(f"decode_attention: q {list(q.shape)} and cache {list(k_cache.shape)} "
                         f"must have Hq a multiple of Hkv and contiguous head_dim")
    if splits < 1 or splits & (splits - 1):
        raise ValueError(f"splits must be a power of two, got {splits}")
    group = Hq // Hkv
    out = torch.empty_like(q) if out is None else out
    part_acc = part_ml = out  # unused with one split
    if splits > 1:
        part_acc = torch.empty(n, Hq, splits, D, dtype=torch.float32, device=q.device)
        part_ml = torch.empty(n, Hq, splits, 2, dtype=torch.float32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 or INTERPRET else "tf32"
    block_d = triton.next_power_of_2(D)
    _decode_attention_kernel[(n, Hkv, splits)](
        q, k_cache, v_cache, tables, rows, lengths, out, part_acc, part_ml,
        q.stride(0), q.stride(1), tables.stride(0), k_cache.stride(1), k_cache.stride(2),
        out.stride(0), out.stride(1),
        math.log2(math.e) / math.sqrt(D),
        BS=k_cache.shape[1], GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), D=D,
        BLOCK_D=block_d,
        BLOCK_N=CONFIG["BLOCK_N"], SPLITS=splits, PRECISION=precision,
        UPCAST=INTERPRET,
        num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"],
    )
    if splits > 1:
        _merge_splits_kernel[(n, Hq)](part_acc, part_ml, out, out.stride(0), out.stride(1),
                                      D=D, BLOCK_D=block_d, SPLITS=splits)
    return out


def reference_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, tables: Tensor, rows: Tensor, lengths: Tensor
) -> Tensor:
    """The same function in float64 with plain torch ops, one row at a time (for tests)."""
    n, Hq, D = q.shape
    bs = k_cache.shape[1]
    group = Hq // k_cache.shape[2]
    out = torch.empty(n, Hq, D, dtype=torch.float64, device=q.device)
    for i in range(n):
        L = int(lengths[i])
        p = torch.arange(L, device=q.device)
        addr = tables[int(rows[i]), p // bs] * bs + p % bs  # [L]
        k = k_cache.flatten(0, 1)[addr].transpose(0, 1).double()  # [Hkv, L, D]
        v = v_cache.flatten(0, 1)[addr].transpose(0, 1).double()
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)  # [Hq, L, D]
        w = torch.softmax((k @ q[i].double()[:, :, None])[..., 0] / math.sqrt(D), -1)  # [Hq, L]
        out[i] = (w[:, None, :] @ v)[:, 0]
    return out
