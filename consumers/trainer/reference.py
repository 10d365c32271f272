"""The reference policy of a KL penalty: a frozen copy of the run's initial weights, and the
per-token KL estimators.

With `loss_config.kl_coef > 0` the learner loads the run's initial checkpoint (the one
`RunStarted` names, `RunContext.init_checkpoint`) a second time, frozen, and computes
log ref(target) for every batch without grad. The reference is read from that checkpoint, never
copied from the live model, so a restarted trainer, `streamrl replay` and a counterfactual all
rebuild the same reference whatever version they resume from. A fork's initial checkpoint is the
parent's weights at the fork version: a fork's reference is where it started. With
`[trainer.algorithm.kl] reference = "producer"` the producers score log ref instead
(producers/reference.py) and the learner reads the batch's `reference_logprobs`; with
`penalty = "reward"` the KL estimate (`kl_reward`) shapes the rewards instead of the loss.

KL(pi || ref) is estimated per token from x = log ref(y) - log pi(y), y sampled (Schulman, 2020,
"Approximating KL divergence"):

    k1 = -x                     unbiased, high variance, can be negative
    k2 = x^2 / 2                biased, low variance, never negative
    k3 = exp(x) - 1 - x         unbiased, low variance, never negative (GRPO's estimator)

Each has gradient 0 where pi = ref; k2 and k3 pull log pi toward log ref from either side.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from streamrl.models import CausalLM, load_checkpoint


def kl_estimate(logprobs: Tensor, reference_logprobs: Tensor, estimator: str,
                max_log_ratio: float) -> Tensor:
    """Per-token estimate of KL(pi || ref); differentiable in `logprobs`. The log-ratio is
    clamped to +-max_log_ratio first, as every ratio in the losses is."""
    x = (reference_logprobs.detach() - logprobs).clamp(-max_log_ratio, max_log_ratio)
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x.square()
    assert estimator == "k3", estimator  # LossConfig admits k1, k2, k3 only
    return torch.exp(x) - 1 - x


def kl_reward(logprobs: Tensor, reference_logprobs: Tensor, loss_mask: Tensor, *,
              estimator: str, max_log_ratio: float) -> Tensor:
    """[B, S] the per-token KL estimate of `[trainer.algorithm.kl] penalty = "reward"`, no grad,
    0 where loss_mask is False. The learner subtracts kl_coef times it from the rewards before
    the advantage (the PPO-RLHF penalty r_t - beta * KL_t; REINFORCE++ folds it into the return),
    with `logprobs` the proximal policy's (the trainer's weights when the batch was formed)."""
    kl = kl_estimate(logprobs.detach().float(), reference_logprobs.float(), estimator,
                     max_log_ratio)
    return torch.where(loss_mask, kl, torch.zeros_like(kl))


class ReferencePolicy:
    """The frozen initial weights on the learner's device. The learner computes log ref(target)
    through this model exactly as it computes its own logprobs (same autocast, kernels,
    temperature and routing replay), so ref = pi bit for bit before the first update and the CPU
    path stays bit-exact on replay."""

    def __init__(self, checkpoint: Path, device: torch.device) -> None:
        self.checkpoint = Path(checkpoint)
        model: CausalLM = load_checkpoint(self.checkpoint)
        self.model = model.to(device).eval().requires_grad_(False)
