"""The sampler of `producers/engine/sampling.py` as one kernel, for rows without top-k/top-p.

Same contract as `sample` (same uniforms, same inverse CDF in vocabulary order, same logprob
convention), so a request's tokens still depend only on its seed and its own logits. The torch
sampler sorts every row to find the top-k/top-p set; with neither set, the kept set is the
whole vocabulary and no sort is needed: two passes over each row's logits do it. Pass 1: max,
argmax (greedy rows) and the softmax normalizer, online. Pass 2: the running sum of
exp(logit - max) in vocabulary order, counting entries whose cumulative mass lies at or below
u * total, which is `searchsorted(cdf, u * total, right=True)`. Reading [n, V] model-dtype
logits twice replaces the torch sampler's dozen fp32 passes and its sort (at V = 152k and 128
rows: about 80 MB read instead of over 1 GB moved).

The engine picks this kernel only when no running request uses top-k/top-p; the result matches
`sample` up to fp32 summation order (a token flips only when u lies within rounding of an edge).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _sample_kernel(
    Logits, stride_l, Temp, U, TokOut, LogpOut, V: tl.constexpr, BLOCK: tl.constexpr
):
    r = tl.program_id(0).to(tl.int64)
    row = Logits + r * stride_l
    t = tl.load(Temp + r)
    greedy = t <= 0
    temp = tl.where(greedy, 1.0, t)
    u = tl.load(U + r)
    c = tl.arange(0, BLOCK)

    m = float("-inf")
    total = 0.0
    best = float("-inf")
    best_idx = 0
    for start in range(0, V, BLOCK):
        mask = start + c < V
        x = tl.load(row + start + c, mask=mask, other=float("-inf")).to(tl.float32) / temp
        bmax = tl.max(x, 0)
        barg = tl.argmax(x, 0, tie_break_left=True)
        if bmax > best:  # strict: the first index wins ties across blocks, as torch.argmax
            best = bmax
            best_idx = start + barg
        m_new = tl.maximum(m, bmax)
        total = total * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new

    target = u * total
    running = 0.0
    count = 0
    for start in range(0, V, BLOCK):
        mask = start + c < V
        x = tl.load(row + start + c, mask=mask, other=float("-inf")).to(tl.float32) / temp
        cdf = tl.cumsum(tl.exp(x - m), 0) + running
        count += tl.sum(((cdf <= target) & mask).to(tl.int32), 0)
        running = tl.max(tl.where(mask, cdf, 0.0), 0)

    tok = tl.where(greedy, best_idx, tl.minimum(count, V - 1))
    logit = tl.load(row + tok).to(tl.float32) / temp
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
    tokens = torch.empty(n, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(n, dtype=torch.float32, device=logits.device)
    _sample_kernel[(n,)](logits, logits.stride(0), temperature.float().contiguous(),
                         uniforms.float().contiguous(), tokens, logprobs, V=V,
                         BLOCK=min(4096, triton.next_power_of_2(V)), num_warps=8)
    return tokens, logprobs
