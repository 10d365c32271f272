"""A reward for the tiny LoRA run that varies between prompts whatever the random model answers
(it answers every prompt alike), so with batch-normalized advantages (REINFORCE++) every step
moves the adapter: the prompt's first digit / 9."""

from __future__ import annotations

from streamrl.hooks.rollout import RewardInput, RewardOutput


def reward(sample: RewardInput) -> RewardOutput:
    return RewardOutput(reward=int(sample.metadata["answer"]) / 9, status="scored")
