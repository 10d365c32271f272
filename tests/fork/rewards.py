"""Reward functions for the fork and re-reward tests, with the recipe's hook type.

The tiny task's random model always answers the same, so every group has equal rewards, zero
advantages, and the weights never change. With `init` (the same model, scaled down: it samples
all tokens) and `low_digit` (earned by about a third of the answers), groups have mixed rewards
and every version has new weights, so digest checks mean something."""

from __future__ import annotations

from pathlib import Path

import torch

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.hooks.run import ModelInitRequest
from streamrl.models import load_checkpoint, save_checkpoint
from tests.run.tiny_task import init as tiny_init


def low_digit(sample: RewardInput) -> RewardOutput:
    """1 when the response starts with a digit 0-4."""
    right = sample.response_text[:1] in ("0", "1", "2", "3", "4")
    return RewardOutput(reward=float(right), status="low" if right else "other")


def inverted(sample: RewardInput) -> RewardOutput:
    """1 - low_digit, with the original as a named detail."""
    original = low_digit(sample)
    return RewardOutput(reward=1.0 - original.reward, details={"original": original.reward},
                        status=f"inverted {original.status}")


def not_a_reward(sample: RewardInput) -> float:
    """Returns the wrong type: re-reward must stop with a clear error, not record garbage."""
    return 1.0


def init(request: ModelInitRequest) -> Path:
    """The tiny task's model with its weights scaled down: near-uniform sampling, so responses
    (and rewards) differ within a group. The tiny model as initialized always answers '==='."""
    tiny_init(request)
    model = load_checkpoint(request.out_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.05)
    save_checkpoint(model, request.out_dir)
    return request.out_dir
