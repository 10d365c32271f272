"""Advantage estimators: per-sample rewards in, per-token advantages out.

Every estimator is an `AdvantageFn`, a plain callable named in the config by a short name of
`streamrl.recipe.trainer.ADVANTAGES` ("grpo", "rloo", ...) or by import path
(`"streamrl.consumers.trainer.advantages:grpo"`). Each computes one scalar advantage per sample and
spreads it over that sample's trained tokens; every other position gets exactly 0.

Groups are the samples sharing a `group_id` (one prompt's samples). A group of one sample, or a
group whose rewards are all equal, carries no learning signal and gets advantage 0, never NaN.

Per-token (process) rewards (`RewardOutput.token_rewards`, the trajectory's `token_rewards`
column) reach `AdvantageInput.token_rewards`; `process` turns them into per-token advantages.
The sample-level estimators read `rewards` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from streamrl.hooks.train import AdvantageFn, AdvantageInput


def make_group_normalized(*, scale_by_std: bool = True, eps: float = 1e-6) -> AdvantageFn:
    """GRPO's group-relative advantage for sample i of group g:

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)      scale_by_std=True (GRPO)
        A_i =  r_i - mean_g(r)                          scale_by_std=False (Dr. GRPO)

    std is the sample standard deviation (Bessel-corrected, n - 1). Dr. GRPO (Liu et al., 2025,
    "Understanding R1-Zero-Like Training") drops the std division because it up-weights prompts
    whose rewards barely vary; pair it with the loss's "seq_sum_norm" aggregation, which drops
    the per-sequence length normalization for the same reason.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")

    def group_normalized(inp: AdvantageInput) -> Tensor:
        r = _rewards(inp)
        index, num_groups = _group_index(inp.group_ids, r.device)
        count, total = _group_count_sum(r, index, num_groups)
        centered = r - (total / count)[index]
        # Exact zero for single-sample and uniform groups: a mean of equal floats may differ
        # from them by rounding, and dividing that residue by eps would invent a signal.
        silent = _varies(r, index, num_groups) == 0
        if scale_by_std:
            sq = torch.zeros_like(count).index_add_(0, index, centered.square())
            std = (sq / (count - 1).clamp(min=1)).sqrt()
            centered = centered / (std[index] + eps)
        return _per_token(inp, torch.where(silent, torch.zeros_like(centered), centered))

    return group_normalized


grpo: AdvantageFn = make_group_normalized()
"""GRPO (Shao et al., 2024, DeepSeekMath): (r - group mean) / (group std + 1e-6). The default."""

dr_grpo: AdvantageFn = make_group_normalized(scale_by_std=False)
"""Dr. GRPO: r - group mean, no std scaling."""


def reinforce_baseline(inp: AdvantageInput) -> Tensor:
    """REINFORCE with a batch-mean baseline: A_i = r_i - mean over the batch of r; groups are
    ignored. A batch of one sample or of equal rewards gets 0."""
    r = _rewards(inp)
    centered = r - r.mean()
    if r.numel() < 2 or bool((r == r[0]).all()):
        centered = torch.zeros_like(r)
    return _per_token(inp, centered)


def rloo(inp: AdvantageInput) -> Tensor:
    """RLOO (Kool et al., 2019; Ahmadian et al., 2024, "Back to Basics"): each sample's
    baseline is the mean reward of the other k - 1 samples of its group:

        A_i = r_i - (1/(k-1)) sum_{j != i} r_j  =  k/(k-1) (r_i - mean_g(r))

    A group of one sample, or of equal rewards, gets 0."""
    r = _rewards(inp)
    index, num_groups = _group_index(inp.group_ids, r.device)
    count, total = _group_count_sum(r, index, num_groups)
    k = count[index]
    others = (total[index] - r) / (k - 1).clamp(min=1)
    return _per_token(inp, torch.where(k < 2, torch.zeros_like(r), r - others)
                      * _varies(r, index, num_groups))


def make_batch_normalized(*, group_baseline: bool = False, eps: float = 1e-6) -> AdvantageFn:
    """REINFORCE++ (Hu, 2025, "REINFORCE++"): no critic and no per-prompt std; the advantage is
    normalized over every trained token of the batch ("global advantage normalization"):

        a_i = r_i                          group_baseline=False (REINFORCE++)
        a_i = r_i - mean_g(r)              group_baseline=True  (REINFORCE++-baseline)
        A_it = (a_i - mean_B(a)) / (std_B(a) + eps)     mean, std over the batch's trained tokens

    std is the population standard deviation over tokens, so a sample weighs by its length, as
    the paper's token-level normalization does. (The paper also folds a token-level KL into the
    return; here KL is a loss term, `loss_config.kl_coef`.) A batch with one value gets 0."""
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")

    def batch_normalized(inp: AdvantageInput) -> Tensor:
        r = _rewards(inp)
        if group_baseline:
            index, num_groups = _group_index(inp.group_ids, r.device)
            count, total = _group_count_sum(r, index, num_groups)
            r = (r - (total / count)[index]) * _varies(r, index, num_groups)
        per_token = _per_token(inp, r).to(torch.float64)
        mask = inp.loss_mask
        values = per_token[mask]
        if values.numel() < 2 or bool((values == values[0]).all()):
            return torch.zeros_like(per_token, dtype=torch.float32)
        centered = (per_token - values.mean()) / ((values - values.mean()).square().mean().sqrt()
                                                  + eps)
        return torch.where(mask, centered, torch.zeros_like(centered)).to(torch.float32)

    return batch_normalized


reinforce_pp: AdvantageFn = make_batch_normalized()
"""REINFORCE++: rewards normalized over the batch's trained tokens."""

reinforce_pp_baseline: AdvantageFn = make_batch_normalized(group_baseline=True)
"""REINFORCE++-baseline: group-mean baseline, then normalized over the batch's tokens."""


def process(inp: AdvantageInput, *, eps: float = 1e-6) -> Tensor:
    """Per-token advantages from per-token (process) rewards: the reward-to-go of each token,
    normalized over its group's trained tokens (GRPO's group normalization, token-weighted):

        G_it = sum_{t' >= t} r_it'                       (undiscounted return, Williams 1992)
        A_it = (G_it - mean_g(G)) / (std_g(G) + eps)     mean, population std over the trained
                                                         tokens of every sample of group g

    r_it is `inp.token_rewards` (every response token's reward, trained or not, enters the
    sums); without it each sample's reward sits on its last trained token, so G_it = r_i on
    every trained token and this is GRPO weighted by length. With `[trainer.algorithm.kl]
    penalty = "reward"` r_it carries -kl_coef * KL_it, so G_it is the KL-penalized return of
    PPO-RLHF and REINFORCE++. A group whose returns are all equal gets exactly 0."""
    mask = inp.loss_mask
    segments = inp.segments if inp.segments is not None else torch.arange(
        mask.shape[0], device=mask.device)[:, None].expand(mask.shape)
    r = inp.token_rewards
    if r is None:
        r = _at_last(_rewards(inp), segments, mask)
    r = torch.where(segments >= 0, r.to(torch.float64), 0.0)
    flat_seg = segments.reshape(-1)
    real = flat_seg >= 0
    seg = flat_seg.clamp(min=0)
    num_samples = len(inp.group_ids)
    before = (r.cumsum(dim=1) - r).reshape(-1)  # exclusive prefix sum along the row
    index = torch.arange(flat_seg.numel(), device=r.device)
    first = torch.full((num_samples,), flat_seg.numel(), device=r.device).scatter_reduce(
        0, seg[real], index[real], "amin")
    total = torch.zeros(num_samples, dtype=torch.float64, device=r.device).index_add_(
        0, seg[real], r.reshape(-1)[real])
    base = before[first.clamp(max=flat_seg.numel() - 1)]
    returns = total[seg] - (before - base[seg])  # [B*S]: the sample's sum from t on
    trained = mask.reshape(-1) & real
    group, num_groups = _group_index(inp.group_ids, r.device)
    g = group[seg][trained]
    values = returns[trained]
    count = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(
        0, g, torch.ones_like(values))
    mean = torch.zeros_like(count).index_add_(0, g, values) / count.clamp(min=1)
    var = torch.zeros_like(count).index_add_(0, g, (values - mean[g]).square()) / count.clamp(
        min=1)
    lo = torch.full_like(count, torch.inf).scatter_reduce(0, g, values, "amin")
    hi = torch.full_like(count, -torch.inf).scatter_reduce(0, g, values, "amax")
    adv = torch.where((lo != hi)[g], (values - mean[g]) / (var.sqrt()[g] + eps), 0.0)
    out = torch.zeros(flat_seg.numel(), dtype=torch.float64, device=r.device)
    out[trained] = adv
    return out.reshape(mask.shape).to(torch.float32)


def at_last_response(values: Tensor, segments: Tensor, versions: Tensor) -> Tensor:
    """[B, S] `values` [N] placed on each sample's last response target (`versions >= 0`
    marks response targets in a TrainBatch), 0 elsewhere; a sample without response tokens
    places nothing."""
    return _at_last(values, segments, versions >= 0)


def _at_last(values: Tensor, segments: Tensor, where: Tensor) -> Tensor:
    flat = segments.reshape(-1)
    pick = where.reshape(-1) & (flat >= 0)
    index = torch.arange(flat.numel(), device=values.device)
    last = torch.full((values.numel(),), -1, device=values.device).scatter_reduce(
        0, flat[pick], index[pick], "amax")
    out = torch.zeros(flat.numel(), dtype=values.dtype, device=values.device)
    has = last >= 0
    out[last[has]] = values[has]
    return out.reshape(segments.shape)


def overlong_penalty(num_response_tokens: Tensor, *, max_new_tokens: int, buffer_tokens: int,
                     penalty: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al., 2025, "DAPO", eq. 13), per sample [N]: with
    L_max = max_new_tokens and L_cache = buffer_tokens,

        0                                          |y| <= L_max - L_cache
        penalty * ((L_max - L_cache) - |y|) / L_cache    L_max - L_cache < |y| <= L_max
        -penalty                                   |y| > L_max

    The learner adds it to the rewards before the advantage (`[trainer.algorithm.overlong]`)."""
    if not 0 < buffer_tokens <= max_new_tokens:
        raise ValueError(f"overlong buffer_tokens ({buffer_tokens}) must be in "
                         f"(0, max_new_tokens ({max_new_tokens})]")
    n = num_response_tokens.to(torch.float64)
    start = max_new_tokens - buffer_tokens
    ramp = (start - n) / buffer_tokens * penalty
    return torch.where(n <= start, torch.zeros_like(n),
                       torch.where(n <= max_new_tokens, ramp, torch.full_like(n, -penalty)))


def _group_count_sum(r: Tensor, index: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """[G] number of samples and sum of rewards of each group."""
    count = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(
        0, index, torch.ones_like(r))
    return count, torch.zeros_like(count).index_add_(0, index, r)


def _varies(r: Tensor, index: Tensor, num_groups: int) -> Tensor:
    """[N] 1.0 where the sample's group has at least two different rewards, else exactly 0."""
    lo = torch.full((num_groups,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, index, r, "amin")
    hi = torch.full((num_groups,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, index, r, "amax")
    return (lo != hi)[index].to(r.dtype)


def _rewards(inp: AdvantageInput) -> Tensor:
    r = inp.rewards.to(torch.float64)  # float64: group sums of many rewards keep their digits
    if r.dim() != 1 or r.numel() != len(inp.group_ids):
        raise ValueError(f"rewards must be [N] with one group id each; got shape "
                         f"{list(inp.rewards.shape)} and {len(inp.group_ids)} group ids")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite")
    return r


def _group_index(group_ids: Sequence[str], device: torch.device) -> tuple[Tensor, int]:
    """Each sample's group as an index in order of first appearance (no hash order involved)."""
    first: dict[str, int] = {}
    index = [first.setdefault(g, len(first)) for g in group_ids]
    return torch.tensor(index, dtype=torch.long, device=device), len(first)


def _per_token(inp: AdvantageInput, per_sample: Tensor) -> Tensor:
    # per_sample: [N] -> [B, S] float32, the sample's value on its trained tokens, 0 elsewhere
    mask = inp.loss_mask
    if inp.segments is None:
        if mask.shape[0] != per_sample.numel():
            raise ValueError(f"loss_mask has {mask.shape[0]} rows for {per_sample.numel()} "
                             "samples; pass segments for packed rows")
        values = per_sample[:, None].expand(mask.shape)
    else:
        values = per_sample[inp.segments.clamp(min=0)]
    return torch.where(mask, values, torch.zeros_like(values)).to(torch.float32)
