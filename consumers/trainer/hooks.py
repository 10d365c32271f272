"""Training-step hooks: extra metrics computed after each optimizer step, recorded with the
step's own metrics in `TrainStep` (and so in TensorBoard and `streamrl compare`).

    def weight_norm(step: TrainStepInput) -> dict[str, float]: ...   # "my.metrics:weight_norm"

A hook must not change the model: the trainer's state stays a pure function of the log.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from torch import nn


class TrainStepInput(msgspec.Struct, kw_only=True, frozen=True):
    version: int  # the version this step produced
    metrics: dict[str, float]  # the step's metrics so far (loss, reward_mean, clip_fraction, ...)
    sample_ids: tuple[str, ...]  # the batch, in training order
    rewards: tuple[float, ...]  # one per sample
    lags: tuple[int, ...]  # versions behind the trainer, one per sample
    model: nn.Module  # read-only


TrainStepHook = Callable[[TrainStepInput], dict[str, float]]


def fresh_reward(step: TrainStepInput) -> dict[str, float]:
    """An example hook: nothing but the mean reward of the freshest samples (lag 0)."""
    fresh = [r for r, lag in zip(step.rewards, step.lags, strict=True) if lag <= 0]
    return {"reward_fresh": sum(fresh) / len(fresh)} if fresh else {}
