"""`exact`: the whole response, stripped of surrounding whitespace, equals the ground truth.

    reward = "exact"
    reward = { name = "exact", options = { ignore_case = true } }

Statuses: "correct", "wrong".
"""

from __future__ import annotations

import msgspec

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.producers.rewards.answers import ground_truth


class ExactReward(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    key: str = "ground_truth"
    """The metadata key of the reference answer."""
    ignore_case: bool = False
    """Compare case-insensitively (str.casefold)."""

    def __call__(self, sample: RewardInput) -> RewardOutput:
        gold, answer = ground_truth(sample, self.key).strip(), sample.response_text.strip()
        if self.ignore_case:
            gold, answer = gold.casefold(), answer.casefold()
        correct = answer == gold
        return RewardOutput(reward=float(correct), status="correct" if correct else "wrong")
