"""The sampler of `producers/engine/sampling.py` as one kernel, for rows without top-k/top-p.

Same contract as `sample` (same uniforms, same inverse CDF in vocabulary order, same logprob
convention), so a request's tokens still depend only on its seed and its own logits. The torch
sampler sorts every row to find the top-k/top-p set; with neither set, the kept set is the
whole vocabulary and no sort is needed. Pass 1, many programs per row: each vocabulary chunk's
max, argmax (for greedy rows) and softmax mass. Pass 2, one program per row: the chunks' masses
give the normalizer and, by their running sum, the one chunk in which u * total falls; only that
chunk is walked, counting entries whose cumulative mass lies at or below u * total, which is
`searchsorted(cdf, u * total, right=True)` over the whole row. About one read of the [n, V]
model-dtype logits replaces the torch sampler's dozen fp32 passes and its sort.

The engine picks this kernel only when no running request uses top-k/top-p; the result matches
`sample` up to fp32 summation order (a token flips only when u lies within rounding of an edge).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _chunk_stats_kernel(
    Logits, stride_l, Temp, CMax, CSum, CArg, V: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Pass 1, one program per (row, chunk): the chunk's max, sum of exp(x - max), first argmax.
    r = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    num_chunks = tl.num_programs(1)
    t = tl.load(Temp + r)
    temp = tl.where(t <= 0, 1.0, t)
    c = tl.arange(0, BLOCK)
    m = float("-inf")
    total = 0.0
    best_idx = 0
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        mask = start + c < V
        x = tl.load(Logits + r * stride_l + start + c, mask=mask, other=float("-inf"))
        x = x.to(tl.float32) / temp
        bmax = tl.max(x, 0)
        if bmax > m:  # strict: the first index wins ties across blocks, as torch.argmax
            best_idx = start + tl.argmax(x, 0, tie_break_left=True)
        m_new = tl.maximum(m, bmax)
        # An all-padding block leaves m at -inf: keep the sum at 0 instead of NaN.
        scale = tl.where(m_new == float("-inf"), 0.0, tl.exp(m - m_new))
        total = total * scale + tl.sum(tl.where(mask, tl.exp(x - m_new), 0.0), 0)
        m = m_new
    out = r * num_chunks + chunk
    tl.store(CMax + out, m)
    tl.store(CSum + out, total)
    tl.store(CArg + out, best_idx)


@triton.jit
def _pick_kernel(
    Logits, stride_l, Temp, U, CMax, CSum, CArg, TokOut, LogpOut, V: tl.constexpr,
    CHUNK: tl.constexpr, NUM_CHUNKS: tl.constexpr, CHUNKS_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    # Pass 2, one program per row: combine the chunks, then walk only the chunk holding u.
    r = tl.program_id(0).to(tl.int64)
    t = tl.load(Temp + r)
    greedy = t <= 0
    temp = tl.where(greedy, 1.0, t)
    j = tl.arange(0, CHUNKS_PAD)
    jmask = j < NUM_CHUNKS
    cmax = tl.load(CMax + r * NUM_CHUNKS + j, mask=jmask, other=float("-inf"))
    m = tl.max(cmax, 0)
    w = tl.where(jmask, tl.load(CSum + r * NUM_CHUNKS + j, mask=jmask, other=0.0)
                 * tl.exp(cmax - m), 0.0)  # [C] each chunk's mass in units of exp(x - m)
    total = tl.sum(w, 0)
    target = tl.load(U + r) * total
    cum = tl.cumsum(w, 0)
    chunk = tl.minimum(tl.sum((jmask & (cum <= target)).to(tl.int32), 0), NUM_CHUNKS - 1)
    running = tl.sum(tl.where(j < chunk, w, 0.0), 0)  # mass before the chosen chunk
    c = tl.arange(0, BLOCK)
    count = chunk * CHUNK
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        mask = start + c < V
        x = tl.load(Logits + r * stride_l + start + c, mask=mask, other=float("-inf"))
        cdf = tl.cumsum(tl.exp(x.to(tl.float32) / temp - m), 0) + running
        count += tl.sum(((cdf <= target) & mask).to(tl.int32), 0)
        running = tl.max(tl.where(mask, cdf, 0.0), 0)
    best_chunk = tl.argmax(cmax, 0, tie_break_left=True)
    best_idx = tl.load(CArg + r * NUM_CHUNKS + best_chunk)
    tok = tl.where(greedy, best_idx, tl.minimum(count, V - 1))
    logit = tl.load(Logits + r * stride_l + tok).to(tl.float32) / temp
    tl.store(TokOut + r, tok.to(tl.int64))
    tl.store(LogpOut + r, logit - m - tl.log(total))


def sample_untruncated(
    logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, uniforms: Tensor
) -> tuple[Tensor, Tensor]:
    """`sampling.sample` for rows whose top_k is 0 and top_p is 1 (those are not read: the
    caller guarantees it). Greedy rows (temperature 0) take the first argmax."""
    # logits: [n, V] (last dim contiguous); temperature, uniforms: [n] fp32
    # -> tokens: [n] int64, logprobs: [n] fp32
    del top_k, top_p
    n, V = logits.shape
    block = min(1024, triton.next_power_of_2(V))
    chunk = triton.cdiv(V, 32 * block) * block  # about 32 chunks per row: 4k programs at 128
    num_chunks = triton.cdiv(V, chunk)
    device = logits.device
    cmax = torch.empty(n, num_chunks, dtype=torch.float32, device=device)
    csum = torch.empty_like(cmax)
    carg = torch.empty(n, num_chunks, dtype=torch.int32, device=device)
    tokens = torch.empty(n, dtype=torch.int64, device=device)
    logprobs = torch.empty(n, dtype=torch.float32, device=device)
    temperature = temperature.float().contiguous()
    _chunk_stats_kernel[(n, num_chunks)](logits, logits.stride(0), temperature, cmax, csum, carg,
                                         V=V, CHUNK=chunk, BLOCK=block, num_warps=4)
    _pick_kernel[(n,)](logits, logits.stride(0), temperature, uniforms.float().contiguous(),
                       cmax, csum, carg, tokens, logprobs, V=V, CHUNK=chunk,
                       NUM_CHUNKS=num_chunks, CHUNKS_PAD=triton.next_power_of_2(num_chunks),
                       BLOCK=block, num_warps=4)
    return tokens, logprobs
