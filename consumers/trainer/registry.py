"""The trainer's hooks by import path (resolved by `streamrl.hooks.resolve`).

Configs name advantage estimators and losses as strings, so a user's own function plugs in with no
registration step and no string dispatch in the core:

    advantage = resolve_advantage("streamrl.consumers.trainer.advantages:grpo")
    loss_fn = resolve_loss("my_project.losses:my_loss")

`AlgorithmConfig` resolves its paths when it is loaded, so a typo fails at startup rather than at
the first training step.
"""

from __future__ import annotations

from typing import cast

import msgspec
from streamrl.consumers.trainer.advantages import AdvantageFn
from streamrl.consumers.trainer.batch import BatchConfig
from streamrl.consumers.trainer.losses import LossConfig, LossFn

from streamrl.hooks import ResolveError, resolve

# ResolveError and resolve are re-exported: trainer hooks resolve like every other hook.
__all__ = ["DEFAULT_ADVANTAGE", "DEFAULT_LOSS", "AlgorithmConfig", "ResolveError", "resolve",
           "resolve_advantage", "resolve_loss"]

DEFAULT_ADVANTAGE = "streamrl.consumers.trainer.advantages:grpo"
DEFAULT_LOSS = "streamrl.consumers.trainer.losses:decoupled_ppo"


def resolve_advantage(path: str) -> AdvantageFn:
    return cast(AdvantageFn, resolve(path, AdvantageFn, what="advantage"))


def resolve_loss(path: str) -> LossFn:
    return cast(LossFn, resolve(path, LossFn, what="loss"))


class AlgorithmConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    advantage: str = DEFAULT_ADVANTAGE
    """Import path of an `AdvantageFn(AdvantageInput) -> Tensor [B, S]` (advantages.py)."""
    loss: str = DEFAULT_LOSS
    """Import path of a `LossFn(LossInput) -> LossOutput` (losses.py)."""
    loss_config: LossConfig = msgspec.field(default_factory=LossConfig)
    """Knobs every built-in loss reads: clip range, importance cap, aggregation."""
    batch: BatchConfig = msgspec.field(default_factory=BatchConfig)
    """Batch assembly: packing and padding."""

    def __post_init__(self) -> None:
        resolve_advantage(self.advantage)
        resolve_loss(self.loss)
