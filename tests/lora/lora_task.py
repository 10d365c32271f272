"""A reward for the tiny LoRA run whose values vary within a group (so every step moves the
adapter): the share of the response's characters that are even digits."""

from __future__ import annotations

from streamrl.hooks.rollout import RewardInput, RewardOutput


def reward(sample: RewardInput) -> RewardOutput:
    text = sample.response_text
    return RewardOutput(reward=sum(c in "02468" for c in text) / 3, status="scored")
