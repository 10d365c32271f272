"""The trainer's hooks and their typed inputs: advantage estimators, policy losses and
training-step metrics. Built-ins live in `streamrl.consumers.trainer` (advantages.py,
losses.py, hooks.py) and are named in `[trainer.algorithm]` by short name
(`streamrl.recipe.trainer.ADVANTAGES`, `LOSSES`); a recipe names its own by import path there
or in `trainer.step_hooks`.

    def my_advantage(inp: AdvantageInput) -> Tensor: ...          # [B, S], 0 where not trained
    def my_loss(inp: LossInput) -> LossOutput: ...
    def weight_norm(step: TrainStepInput) -> dict[str, float]: ...   # extra metrics per step

A step hook must not change the model: the trainer's state stays a pure function of the log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
from torch import Tensor, nn

from streamrl.recipe.trainer import CorrectionConfig, LossConfig


class AdvantageInput(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    """What an advantage estimator may look at: rewards, groups and where tokens are trained."""

    rewards: Tensor  # [N] float
    group_ids: Sequence[str]  # [N]
    loss_mask: Tensor  # [B, S] bool
    segments: Tensor | None = None
    """[B, S] int64 sample index of each position (-1 = padding); None means row b is sample b."""
    token_rewards: Tensor | None = None
    """[B, S] float per-token rewards at the response positions (0 elsewhere), or None when no
    sample of the batch has any and the KL is not a reward penalty. A sample without recorded
    `token_rewards` has its (shaped) reward on its last response token; with
    `[trainer.algorithm.kl] penalty = "reward"` every response token also carries
    -kl_coef * KL. Sample-level estimators ignore it; "process" reads it."""


AdvantageFn = Callable[[AdvantageInput], Tensor]
"""AdvantageInput -> advantages [B, S] float32, zero wherever loss_mask is False."""


class CorrectionInput(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    """What a train/rollout mismatch correction looks at: both policies' logprobs of the
    sampled tokens, no grad."""

    train_logprobs: Tensor  # [B, S] log prox(target): the trainer's weights at batch formation
    rollout_logprobs: Tensor  # [B, S] log mu(target): the engine's, at its temperature
    loss_mask: Tensor  # [B, S] bool
    config: CorrectionConfig
    max_log_ratio: float = 20.0
    """Log-ratios are clamped to +-this before exp (LossConfig.max_log_ratio)."""
    segments: Tensor | None = None
    """[B, S] sample index per position (-1 = padding); None means row b is sample b."""


class Correction(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    """The behavior weight of every token (a per-sample policy writes its sample's weight on
    each of the sample's tokens; 0 = masked) and which tokens the policy truncated or masked."""

    weight: Tensor  # [B, S] float, no grad
    rejected: Tensor  # [B, S] bool


CorrectionFn = Callable[[CorrectionInput], Correction]
"""CorrectionInput -> Correction: the weight that replaces a loss's own capped prox/mu."""


class LossInput(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    logprobs: Tensor  # [B, S] log pi(target), current policy, requires grad
    old_logprobs: Tensor  # [B, S] log mu(target), from the engine at its temperature
    proximal_logprobs: Tensor | None  # [B, S] log prox(target), no grad; None = not computed
    advantages: Tensor  # [B, S]
    loss_mask: Tensor  # [B, S] bool
    versions: Tensor  # [B, S] int, the version that sampled each target
    current_version: int
    config: LossConfig
    segments: Tensor | None = None
    """[B, S] sample index per position (-1 = padding) for per-sample aggregation of packed
    rows; None means row b is sample b."""
    reference_logprobs: Tensor | None = None
    """[B, S] log ref(target) from the frozen initial weights, no grad; given when
    config.kl_coef > 0, None otherwise."""
    entropy: Tensor | None = None
    """[B, S] entropy of pi(.|context) at each position, with grad; given when
    config.entropy_coef > 0, None otherwise."""
    behavior: Correction | None = None
    """The train/rollout mismatch correction of `[trainer.algorithm] correction`, computed once
    per step from prox and mu: every built-in loss takes its behavior weight from here instead
    of capping prox/mu itself; None = no correction policy named (the loss's own cap)."""


class LossOutput(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    """The loss and its diagnostics, each a mean over trained tokens unless named otherwise:
    clip_fraction (tokens whose clip was active), ratio_mean (the clipped ratio), tis_weight_mean
    and tis_weight_max (the capped behavior weight w), truncated_fraction (tokens over the cap),
    approx_kl_old (k3 estimate of KL(mu || pi)), staleness_mean/max (current_version - version),
    num_tokens, loss; with a reference, kl_ref (the configured estimate of KL(pi || ref)); with
    an entropy bonus, entropy_mean."""

    loss: Tensor  # scalar, differentiable
    metrics: dict[str, float]


LossFn = Callable[[LossInput], LossOutput]


class TrainStepInput(msgspec.Struct, kw_only=True, frozen=True):
    version: int  # the version this step produced
    metrics: dict[str, float]  # the step's metrics so far (loss, reward_mean, clip_fraction, ...)
    sample_ids: tuple[str, ...]  # the batch, in training order
    rewards: tuple[float, ...]  # one per sample
    lags: tuple[int, ...]  # versions behind the trainer, one per sample
    model: nn.Module  # read-only


TrainStepHook = Callable[[TrainStepInput], dict[str, float]]
