"""The reward of the KL-in-reward replay test: replay_util's outcome reward, plus a per-token
(process) reward on every response token, so the run records both new trajectory columns."""

from __future__ import annotations

from streamrl.hooks.rollout import RewardInput, RewardOutput
from tests.replay import replay_util


def reward(sample: RewardInput) -> RewardOutput:
    out = replay_util.reward(sample)
    tokens = [0.1 * (int(t) % 3) for t in sample.response_tokens]  # a deterministic "process"
    tokens[-1] += out.reward
    return RewardOutput(reward=out.reward, status=out.status, token_rewards=tuple(tokens))
