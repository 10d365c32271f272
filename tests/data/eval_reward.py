"""A reward for the periodic-evaluation tests that a random-init model passes about half the time
(the parity of the first sampled token), so mean@k and pass@k are not trivially 0 or 1."""

from __future__ import annotations

from streamrl.hooks.rollout import RewardInput, RewardOutput


def parity(sample: RewardInput) -> RewardOutput:
    even = len(sample.response_tokens) > 0 and int(sample.response_tokens[0]) % 2 == 0
    return RewardOutput(reward=float(even), status="even" if even else "odd")
