"""A reward for tests/producers/test_dynamic_sampling.py, in a module of its own so the reward
worker process imports nothing heavy: metadata["mode"] == "flat" scores every sample 1.0, any
other prompt gets a new value per call (its group's rewards always differ)."""

from __future__ import annotations

import itertools

from streamrl.hooks.rollout import RewardInput, RewardOutput

_calls = itertools.count()


def flat_or_varied(sample: RewardInput) -> RewardOutput:
    if sample.metadata.get("mode") == "flat":
        return RewardOutput(reward=1.0)
    return RewardOutput(reward=float(next(_calls)))
