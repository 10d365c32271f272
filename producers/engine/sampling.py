"""The batched sampler (`SamplingParams` lives in `streamrl.hooks.generation`).

Each row of a batch is sampled with its own temperature, top-k and top-p in one pass of tensor
ops, with no per-row Python and no data-dependent shapes, so the CUDA decoder's graphs capture it
(producers/engine/cuda/decoder.py).

Randomness is per request, never per batch. When a request is admitted, a `torch.Generator`
seeded from the request's seed draws one uniform number per response token it may produce
(`request_uniforms`); token i is chosen by inverse CDF with uniform u_i over the truncated
distribution, walked in vocabulary order. A request's tokens thus depend only on its seed and
its own logits, not on which requests share the batch, their order or their KV slots: replaying
a recorded seed reproduces the sample. That is exact when the logits are bitwise the same; a
different batch shape may change them by fp32 noise (BLAS picks kernels by shape), which flips
a token only if u falls within that noise of an interval edge (order 1e-6 per token). One
uniform per token (Gumbel-max would need one per vocab entry) makes drawing them all up front
cheap and keeps generator calls out of the decode step.

The logprob convention (temperature applied, before top-k/top-p truncation) and the seed
derivation are the engine-neutral contract in `streamrl.hooks.generation`; `sample` implements
them.
"""

from __future__ import annotations

import torch
from torch import Tensor

_UNIFORM_CHUNK = 256  # uniforms are drawn in fixed chunks so u_i never depends on the total drawn


def request_uniforms(seed: int, num_tokens: int) -> Tensor:
    """The uniforms in [0, 1) that choose a request's response tokens 0..num_tokens-1."""
    # -> [num_tokens] float32, on CPU; u_i depends only on (seed, i)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    num_chunks = -(-num_tokens // _UNIFORM_CHUNK)
    chunks = [torch.rand(_UNIFORM_CHUNK, generator=gen) for _ in range(num_chunks)]
    return torch.cat(chunks)[:num_tokens] if chunks else torch.zeros(0)


def sample(
    logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, uniforms: Tensor
) -> tuple[Tensor, Tensor]:
    """Sample one token per row; returns (tokens, logprobs of those tokens).

    Rows with temperature 0 take the argmax of `logits` (first index on ties, as
    `torch.argmax`); so do rows with top_k 1 or a top_p below the top token's probability.
    """
    # logits: [B, V]; temperature, top_p, uniforms: [B] float32; top_k: [B] int (0 = off)
    # -> tokens: [B] int64, logprobs: [B] float32
    V = logits.shape[-1]
    greedy = temperature <= 0
    temp = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = logits.float() / temp[:, None]  # [B, V]; exact copy of the logits when temp is 1
    logp = torch.log_softmax(scaled, dim=-1)  # [B, V]; the reported logprobs, before truncation
    # Which tokens survive top-k/top-p needs the ranking. Sort the scaled logits, not logp, so
    # ties and order are those of the logits themselves.
    _, order = torch.sort(scaled, dim=-1, descending=True, stable=True)  # [B, V]
    ranked = logp.gather(-1, order).exp()  # [B, V] probabilities, descending
    rank = torch.arange(V, device=logits.device)
    k = torch.where(top_k > 0, top_k, V).masked_fill(greedy, 1)  # [B]
    mass_before = ranked.cumsum(-1) - ranked  # [B, V]; mass of strictly more likely tokens
    # top_p 1 must keep everything even where the fp32 cumsum overshoots 1 in the tail.
    p_cut = top_p.masked_fill(top_p >= 1, float("inf"))  # [B]
    # Both conditions are monotone in rank, so the kept set is a prefix; rank 0 is always kept.
    kept_ranks = (rank[None] < k[:, None]) & (mass_before < p_cut[:, None])  # [B, V]
    keep = torch.zeros_like(kept_ranks).scatter_(-1, order, kept_ranks)  # [B, V] vocab order
    # The inverse CDF walks the kept tokens in vocabulary order, not by rank: near-equal
    # probabilities swap ranks under fp32 noise (e.g. another batch shape's BLAS kernel), which
    # would hand u to a different token; in vocabulary order a token changes only if u lies
    # within that noise of an interval edge.
    cdf = (logp.exp() * keep).cumsum(-1)  # [B, V]
    target = uniforms * cdf[:, -1]  # [B]; u < 1, so the target lies inside the kept mass
    tokens = torch.searchsorted(cdf, target[:, None], right=True)[:, 0]  # [B]
    # Rounding can put the target on the very last edge: fall back to the last kept token.
    last_kept = (keep * rank[None]).amax(-1)  # [B]
    tokens = torch.minimum(tokens, last_kept)
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]
