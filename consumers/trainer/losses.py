"""Policy losses for off-policy token streams: PPO-clip with truncated importance sampling,
AReaL's decoupled PPO objective, GSPO (sequence-level ratio, and its token variant) and CISPO
(clipped stop-gradient importance weights on REINFORCE). Formulas and papers: docs/algorithms.md.

Three policies meet in a streaming trainer, per token:
  mu     the sampler: the engine's logprobs (`old_logprobs`), possibly several versions stale and
         computed by a different kernel stack than the trainer's;
  prox   the proximal policy: the trainer's weights when the batch was formed, recomputed without
         grad (`proximal_logprobs`);
  pi     the current policy being optimized (`logprobs`, with grad).

Every log-ratio is clamped to +-`max_log_ratio` before exp, so a token whose probability
collapsed to 0 gives a large finite ratio (and no gradient through the clamp), never inf. Masked
positions are replaced by zeros before any arithmetic: they contribute exactly 0 to the loss and
to the gradient even when their logprobs are -inf or NaN.

How they meet the decoupled objective: every loss centres its ratio on the proximal policy when
`proximal_logprobs` is given (on mu otherwise) and corrects prox vs mu with the capped behavior
weight w = min(prox/mu, C) (`cap_mode` "mask": 0 above C); GSPO takes that weight per sequence,
exp(mean_t log(prox/mu)), like its ratio. Staleness sample weights arrive folded into the
advantages, so they scale the policy term of every loss and never the KL or entropy terms.
A mismatch correction named in the recipe (`LossInput.behavior`, correction.py) replaces
that capped weight in every loss, per token as it is given.
Every loss adds, per trained token and before aggregation, kl_coef * KL-estimate(pi || ref) and
-entropy_coef * H(pi) when the learner passes `reference_logprobs` / `entropy`.
"""

from __future__ import annotations

import msgspec
import torch
from torch import Tensor

from streamrl.consumers.trainer.reference import kl_estimate
from streamrl.hooks.train import LossInput, LossOutput
from streamrl.recipe.trainer import LossConfig


def ppo_tis(inp: LossInput) -> LossOutput:
    """PPO-clip against the sampler, with the train/rollout part of its importance weight truncated.

        r   = exp(logp - old)                         ratio to the sampler mu
        s   = min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)
        ref = prox if given, else logp (detached)
        g   = exp(ref - old)                          trainer-vs-sampler mismatch, no grad
        w   = min(g, C)                               (cap_mode "mask": w = g if g <= C else 0)
        L   = -(w / g) s

    On unclipped tokens the gradient is -w (pi / ref) A grad(logp): exactly PPO's -r A grad(logp)
    while g <= C, and the mismatch factor capped at C beyond. This is the truncated importance
    sampling fix for rollout engines whose probabilities differ from the trainer's (Yao et al.,
    2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"): weight each
    token by min(trainer prob / sampler prob, C) so rare large mismatches cannot dominate.
    """
    p = _prepared(inp)
    ref = p.prox if p.prox is not None else p.logp.detach()
    g, w, capped = _behavior_weight(ref, p.old, inp)
    r = _exp_ratio(p.logp, p.old, inp.config)
    surrogate, clipped = _clipped_surrogate(r, p.adv, inp.config)
    return _finish(-(w / g) * surrogate, r, w, capped, clipped, p, inp)


def decoupled_ppo(inp: LossInput) -> LossOutput:
    """AReaL's decoupled PPO objective (Fu et al., 2025): the trust region is centred on the
    proximal policy, and off-policyness with respect to the sampler is corrected by importance
    weighting:

        w = min(exp(prox - old), C)                   behavior weight prox/mu, no grad
                                                      (cap_mode "mask": 0 above C)
        r = exp(logp - prox)                          ratio to the proximal policy
        L = -w min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)

    Stale samples thus need no tighter clipping: however old mu is, each update moves pi at most
    eps away from prox. Without `proximal_logprobs` the sampler is the proximal policy (w = 1),
    which is plain PPO-clip against the sampler.
    """
    p = _prepared(inp)
    prox = p.prox if p.prox is not None else p.old
    _, w, capped = _behavior_weight(prox, p.old, inp)
    r = _exp_ratio(p.logp, prox, inp.config)
    surrogate, clipped = _clipped_surrogate(r, p.adv, inp.config)
    return _finish(-w * surrogate, r, w, capped, clipped, p, inp)


def gspo(inp: LossInput) -> LossOutput:
    """GSPO (Zheng et al., 2025, "Group Sequence Policy Optimization"): one length-normalized
    importance ratio and one clip decision per sequence:

        s_i = exp( (1/|y_i|) sum_t log(pi(y_it) / old(y_it)) )      old = prox if given, else mu
        L_i = -w_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)
        w_i = min(exp((1/|y_i|) sum_t log(prox(y_it) / mu(y_it))), C)     1 without prox

    A_i is the mean of the sample's token advantages (they are equal for every built-in
    estimator). L_i is written on each of the sample's tokens, so aggregation "seq_mean" gives
    the paper's (1/G) sum_i L_i, and "token_mean" weighs sequence i by its |y_i| tokens. The paper
    uses far smaller clip ranges than PPO's (3e-4 / 4e-4): the ratio is a per-token geometric
    mean. Unclipped, the gradient is -w_i s_i A_i (1/|y_i|) sum_t grad log pi(y_it).
    """
    p = _prepared(inp)
    seg, num = _sample_index(inp, p.mask)
    centre = p.prox if p.prox is not None else p.old
    log_s = _sample_mean(p.logp - centre, p.mask, seg, num)
    s = torch.exp(log_s.clamp(-inp.config.max_log_ratio, inp.config.max_log_ratio))
    adv = _sample_mean(p.adv, p.mask, seg, num)
    w, capped = _sequence_behavior_weight(p, seg, num, inp)
    surrogate, clipped = _clipped_surrogate(s, adv, inp.config)
    at = seg.clamp(min=0)
    return _finish(-w * surrogate[at], s[at], w, capped, clipped[at], p, inp)


def gspo_token(inp: LossInput) -> LossOutput:
    """GSPO-token (same paper, eq. 13): GSPO's sequence ratio carried to each token so token
    advantages may differ within a sequence:

        s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)]
        L_it = -w_i min(s_it A_it, clip(s_it, 1 - eps_low, 1 + eps_high) A_it)

    s_it equals s_i in value (clip decisions stay per sequence), and with equal token advantages
    its value and gradient under "seq_mean" are exactly GSPO's.
    """
    p = _prepared(inp)
    seg, num = _sample_index(inp, p.mask)
    centre = p.prox if p.prox is not None else p.old
    log_s = _sample_mean(p.logp - centre, p.mask, seg, num).detach()
    s = torch.exp(log_s.clamp(-inp.config.max_log_ratio, inp.config.max_log_ratio))
    at = seg.clamp(min=0)
    r = s[at] * torch.exp(p.logp - p.logp.detach())
    w, capped = _sequence_behavior_weight(p, seg, num, inp)
    surrogate, clipped = _clipped_surrogate(r, p.adv, inp.config)
    return _finish(-w * surrogate, r, w, capped, clipped, p, inp)


def cispo(inp: LossInput) -> LossOutput:
    """CISPO (MiniMax, 2025, "MiniMax-M1"): REINFORCE with clipped, stop-gradient importance
    weights, so no token's gradient is ever dropped by a clip:

        r = exp(logp - old)                           old = prox if given, else mu
        L = -w sg(clip(r, 1 - eps_low, 1 + eps_high)) A logp
        w = min(exp(prox - mu), C)                    behavior weight, 1 without prox

    The gradient is -w clip(r) A grad(logp) on every trained token (PPO's is 0 on clipped ones).
    MiniMax-M1 bounds the weight from above only: use a large clip_low (e.g. 0.99) for that.
    """
    p = _prepared(inp)
    centre = p.prox if p.prox is not None else p.old
    w, capped = ((torch.ones_like(p.logp), torch.zeros_like(p.mask))
                 if p.prox is None and inp.behavior is None
                 else _behavior_weight(centre, p.old, inp)[1:])
    r = _exp_ratio(p.logp.detach(), centre, inp.config)
    lo, hi = 1.0 - inp.config.clip_low, 1.0 + inp.config.clip_high
    clipped = (r < lo) | (r > hi)
    return _finish(-w * r.clamp(lo, hi) * p.adv * p.logp, r, w, capped, clipped, p, inp)


class _Prepared(msgspec.Struct, frozen=True):
    logp: Tensor
    old: Tensor
    prox: Tensor | None
    adv: Tensor
    mask: Tensor


def _prepared(inp: LossInput) -> _Prepared:
    mask = inp.loss_mask.bool()
    if inp.logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {list(inp.logprobs.shape)} and loss_mask "
                         f"{list(mask.shape)} must have the same [B, S] shape")

    def clean(t: Tensor) -> Tensor:
        # where(), not multiplication: 0 * -inf would be NaN, and where's backward sends exact
        # zeros to the masked positions.
        t = t.float()
        return torch.where(mask, t, torch.zeros_like(t))

    prox = None if inp.proximal_logprobs is None else clean(inp.proximal_logprobs.detach())
    return _Prepared(clean(inp.logprobs), clean(inp.old_logprobs.detach()), prox,
                     clean(inp.advantages.detach()), mask)


def _exp_ratio(a: Tensor, b: Tensor, config: LossConfig) -> Tensor:
    return torch.exp((a - b).clamp(-config.max_log_ratio, config.max_log_ratio))


def _behavior_weight(ref: Tensor, old: Tensor, inp: LossInput) -> tuple[Tensor, Tensor, Tensor]:
    """(g = ref/mu, w = g capped at C, whether the cap was hit), all without grad; w and the
    cap come from the step's mismatch correction when the learner computed one."""
    g = _exp_ratio(ref.detach(), old, inp.config)
    if inp.behavior is not None:
        return g, *_given(inp)
    return g, *_capped(g, inp.config)


def _given(inp: LossInput) -> tuple[Tensor, Tensor]:
    """The correction's (weight, rejected), zero / False where no token is trained."""
    mask = inp.loss_mask.bool()
    assert inp.behavior is not None
    weight = inp.behavior.weight.detach().float()
    return torch.where(mask, weight, 0.0), inp.behavior.rejected.bool() & mask


def _capped(g: Tensor, config: LossConfig) -> tuple[Tensor, Tensor]:
    """(g capped at C as `cap_mode` says, whether the cap was hit)."""
    capped = g > config.importance_cap
    over = (torch.full_like(g, config.importance_cap) if config.cap_mode == "truncate"
            else torch.zeros_like(g))
    return torch.where(capped, over, g), capped


def _sequence_behavior_weight(p: _Prepared, seg: Tensor, num: int,
                              inp: LossInput) -> tuple[Tensor, Tensor]:
    """[B, S]: (w_i = min(exp(mean_t log(prox/mu)), C) on each token of sample i, whether the
    cap was hit); w = 1 without a proximal policy. A mismatch correction's weights replace it
    as they are: a token-level policy then weighs each token's copy of L_i by its own w_t."""
    if inp.behavior is not None:
        return _given(inp)
    at = seg.clamp(min=0)
    if p.prox is None:
        ones = p.logp.new_ones(num)
        return ones[at], torch.zeros_like(ones, dtype=torch.bool)[at]
    log_g = _sample_mean(p.prox - p.old, p.mask, seg, num)
    g = torch.exp(log_g.clamp(-inp.config.max_log_ratio, inp.config.max_log_ratio))
    w, capped = _capped(g, inp.config)
    return w[at], capped[at]


def _sample_index(inp: LossInput, mask: Tensor) -> tuple[Tensor, int]:
    """[B, S] sample index of each position (-1 = padding) and the number of samples."""
    if inp.segments is None:
        seg = torch.arange(mask.shape[0], device=mask.device)[:, None].expand(mask.shape)
    else:
        seg = inp.segments.long()
    return seg, int(seg.max()) + 1 if seg.numel() else 0


def _sample_mean(values: Tensor, mask: Tensor, seg: Tensor, num: int) -> Tensor:
    """[N] mean of `values` over each sample's trained tokens (0 for a sample with none)."""
    index = seg.clamp(min=0).reshape(-1)
    masked = torch.where(mask, values, torch.zeros_like(values)).reshape(-1)
    sums = values.new_zeros(num).index_add(0, index, masked)
    counts = values.new_zeros(num).index_add(0, index, mask.reshape(-1).to(values.dtype))
    return sums / counts.clamp(min=1)


def _clipped_surrogate(r: Tensor, adv: Tensor, config: LossConfig) -> tuple[Tensor, Tensor]:
    """min(r A, clip(r) A), written as a choice so the clip is active strictly beyond 1 +- eps
    (where it is active the value is a constant: zero gradient)."""
    lo, hi = 1.0 - config.clip_low, 1.0 + config.clip_high
    clipped = ((adv > 0) & (r > hi)) | ((adv < 0) & (r < lo))
    bound = (r.detach().clamp(lo, hi) * adv)
    return torch.where(clipped, bound, r * adv), clipped


def _finish(per_token: Tensor, r: Tensor, w: Tensor, capped: Tensor, clipped: Tensor,
            p: _Prepared, inp: LossInput) -> LossOutput:
    mask = p.mask
    config = inp.config
    kl = entropy = None
    if inp.reference_logprobs is not None and config.kl_coef > 0:
        reference = torch.where(mask, inp.reference_logprobs.float(), 0.0)
        kl = kl_estimate(p.logp, reference, config.kl_estimator, config.max_log_ratio)
        per_token = per_token + config.kl_coef * kl
    if inp.entropy is not None and config.entropy_coef > 0:
        entropy = torch.where(mask, inp.entropy.float(), 0.0)
        per_token = per_token - config.entropy_coef * entropy
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    loss = _aggregate(per_token, mask, inp)
    with torch.no_grad():
        n = max(int(mask.sum()), 1)

        def mean(t: Tensor) -> float:
            return float(torch.where(mask, t.float(), 0.0).sum() / n)

        def peak(t: Tensor) -> float:
            return float(t.float()[mask].max()) if bool(mask.any()) else 0.0

        log_q = (p.logp - p.old).clamp(-inp.config.max_log_ratio, inp.config.max_log_ratio)
        k3 = torch.exp(log_q) - 1 - log_q  # estimates KL(mu || pi) from samples of mu
        staleness = inp.current_version - inp.versions.long()
        metrics = {
            "loss": float(loss),
            "num_tokens": float(mask.sum()),
            "clip_fraction": mean(clipped),
            "ratio_mean": mean(r),
            "tis_weight_mean": mean(w),
            "tis_weight_max": peak(w),
            "truncated_fraction": mean(capped),
            "approx_kl_old": mean(k3),
            "staleness_mean": mean(staleness),
            "staleness_max": peak(staleness),
        }
        if kl is not None:
            metrics["kl_ref"] = mean(kl)
        if entropy is not None:
            metrics["entropy_mean"] = mean(entropy)
    return LossOutput(loss=loss, metrics=metrics)


def _aggregate(per_token: Tensor, mask: Tensor, inp: LossInput) -> Tensor:
    config = inp.config
    if config.aggregation == "token_mean":
        return per_token.sum() / mask.sum().clamp(min=1)
    if inp.segments is None:
        segments = torch.arange(mask.shape[0], device=mask.device)[:, None].expand(mask.shape)
    else:
        segments = inp.segments
    num_samples = int(segments.max()) + 1 if segments.numel() else 0
    if config.aggregation == "seq_sum_norm":
        assert config.norm_tokens is not None  # checked in LossConfig
        return per_token.sum() / max(num_samples * config.norm_tokens, 1)
    index = segments.clamp(min=0).reshape(-1)
    sums = per_token.new_zeros(num_samples).index_add(0, index, per_token.reshape(-1))
    counts = per_token.new_zeros(num_samples).index_add(0, index, mask.reshape(-1).float())
    has_tokens = counts > 0
    per_sample = sums[has_tokens] / counts[has_tokens]
    return per_sample.sum() / max(int(has_tokens.sum()), 1)
