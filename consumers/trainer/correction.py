"""Train/rollout mismatch correction: the behavior weight each token's loss term is multiplied
by, from the trainer's probability of the sampled token (prox, recomputed when the batch
formed) and the engine's (mu). The engine samples with other kernels, other precisions
(FP8, INT4) and possibly older weights, so prox/mu is not 1; these policies bound what that
ratio may do to the gradient. Named in `[trainer.algorithm] correction` (`CORRECTIONS` in
streamrl/recipe/trainer.py), computed once per step by the learner, handed to the loss as
`LossInput.behavior`. With g_t = prox_t / mu_t (log-ratio clamped to +-max_log_ratio), C =
correction_config.cap and F its floor:

  tis            w_t = min(g_t, C)                                 truncate per token
  mis_token      w_t = g_t if F <= g_t <= C else 0                 mask per token (F = 0)
  mis_sequence   w_t = G_i if F <= G_i <= C else 0,  G_i = prod_t g_t     per sample (F = 0)
  mis_geometric  w_t = G_i if F <= G_i <= C else 0,  G_i = exp(mean_t log g_t)  (F = 1/C)
  icepop         w_t = g_t if 1/C <= g_t <= C else 0               two-sided token mask

"Mask instead of clip" (MIS) drops the gradient of a token or a sample whose mismatch is too
large rather than keeping it at weight C; IcePop (Ring-1T, 2025) masks both tails. Formulas and
papers: docs/low-precision.md. `mismatch_metrics` gives the step's diagnostics whatever the
policy: the mean |log prox - log mu|, a k3 estimate of KL(mu || prox) from mu's samples, and
the policy's rejected (truncated or masked) fraction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from streamrl.hooks.train import Correction, CorrectionInput


def tis(inp: CorrectionInput) -> Correction:
    """Token-level truncated importance sampling: w = min(g, C)."""
    g = _token_ratio(inp)
    cap = inp.config.cap
    rejected = g > cap
    return _out(torch.where(rejected, torch.full_like(g, cap), g), rejected, inp)


def mis_token(inp: CorrectionInput) -> Correction:
    """Token-level masked importance sampling: w = g inside [F, C], 0 outside (F = 0)."""
    return _token_mask(inp, inp.config.floor_or(0.0))


def icepop(inp: CorrectionInput) -> Correction:
    """IcePop: w = g inside [1/C, C] (or [F, C]), 0 outside: both tails masked per token."""
    return _token_mask(inp, inp.config.floor_or(1.0 / inp.config.cap))


def mis_sequence(inp: CorrectionInput) -> Correction:
    """Sequence-level MIS: the product of the sample's token ratios, masked outside [F, C]."""
    return _sample_mask(inp, mean=False, floor=inp.config.floor_or(0.0))


def mis_geometric(inp: CorrectionInput) -> Correction:
    """Geometric-mean MIS: exp(mean_t log g_t) per sample, masked outside [F, C] (F = 1/C)."""
    return _sample_mask(inp, mean=True, floor=inp.config.floor_or(1.0 / inp.config.cap))


def mismatch_metrics(train_logprobs: Tensor, rollout_logprobs: Tensor, loss_mask: Tensor,
                     correction: Correction | None = None, *, max_log_ratio: float = 20.0,
                     fresh: Tensor | None = None) -> dict[str, float]:
    """Means over trained tokens: mismatch_abs_logprob = |log prox - log mu|; mismatch_kl =
    exp(d) - 1 - d with d = log prox - log mu, the k3 estimate of KL(mu || prox) from mu's
    samples (unbiased, never negative); with a correction, mismatch_rejected_fraction (tokens it
    truncated or masked) and mismatch_weight_mean (its weight). With `fresh` ([B, S] bool: the
    tokens sampled by the very weights prox has), the same two over those tokens alone
    (mismatch_abs_logprob_fresh, mismatch_kl_fresh: the engine-vs-trainer mismatch without the
    policy's change since a stale token was sampled; 0 when none is fresh) and their share
    mismatch_fresh_fraction."""
    mask = loss_mask.bool()
    d = torch.where(mask, (train_logprobs.float() - rollout_logprobs.float()), 0.0)
    d = d.clamp(-max_log_ratio, max_log_ratio)

    def mean(t: Tensor, where: Tensor = mask) -> float:
        return float(torch.where(where, t.double(), 0.0).sum() / max(int(where.sum()), 1))

    metrics = {"mismatch_abs_logprob": mean(d.abs()), "mismatch_kl": mean(torch.expm1(d) - d)}
    if fresh is not None:
        now = mask & fresh.bool()
        metrics |= {"mismatch_abs_logprob_fresh": mean(d.abs(), now),
                    "mismatch_kl_fresh": mean(torch.expm1(d) - d, now),
                    "mismatch_fresh_fraction": mean(fresh.float())}
    if correction is not None:
        metrics["mismatch_rejected_fraction"] = mean(correction.rejected.float())
        metrics["mismatch_weight_mean"] = mean(correction.weight)
    return metrics


def _log_ratio(inp: CorrectionInput) -> Tensor:
    """[B, S] log prox - log mu, 0 where not trained, clamped to +-max_log_ratio."""
    mask = inp.loss_mask.bool()
    d = inp.train_logprobs.detach().float() - inp.rollout_logprobs.detach().float()
    return torch.where(mask, d, 0.0).clamp(-inp.max_log_ratio, inp.max_log_ratio)


def _token_ratio(inp: CorrectionInput) -> Tensor:
    return torch.exp(_log_ratio(inp))


def _token_mask(inp: CorrectionInput, floor: float) -> Correction:
    g = _token_ratio(inp)
    rejected = (g > inp.config.cap) | (g < floor)
    return _out(torch.where(rejected, 0.0, g), rejected, inp)


def _sample_mask(inp: CorrectionInput, *, mean: bool, floor: float) -> Correction:
    """Per sample: G_i = exp(sum or mean of its tokens' log-ratios), masked outside [floor, C]
    and written on each of its positions."""
    mask = inp.loss_mask.bool()
    d = _log_ratio(inp)
    if inp.segments is None:
        seg = torch.arange(mask.shape[0], device=mask.device)[:, None].expand(mask.shape)
    else:
        seg = inp.segments.long()
    num = int(seg.max()) + 1 if seg.numel() else 0
    index = seg.clamp(min=0).reshape(-1)
    sums = d.new_zeros(num).index_add(0, index, d.reshape(-1))
    if mean:
        counts = d.new_zeros(num).index_add(0, index, mask.reshape(-1).float())
        sums = sums / counts.clamp(min=1)
    ratio = torch.exp(sums.clamp(-inp.max_log_ratio, inp.max_log_ratio))  # [N]
    rejected = (ratio > inp.config.cap) | (ratio < floor)
    at = seg.clamp(min=0)
    return _out(torch.where(rejected, 0.0, ratio)[at], rejected[at], inp)


def _out(weight: Tensor, rejected: Tensor, inp: CorrectionInput) -> Correction:
    mask = inp.loss_mask.bool()
    return Correction(weight=torch.where(mask, weight, 0.0), rejected=rejected & mask)
