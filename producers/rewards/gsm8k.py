"""`gsm8k`: GSM8K's answer convention, `#### <number>` at the end of the solution, compared as
an exact decimal ("1,000", "1000" and "1000.0" are one answer).

    reward = "gsm8k"
    reward = { name = "gsm8k", options = { flexible = true } }    # the last number in the text

The ground truth may be the bare number or GSM8K's whole `answer` field ("... #### 72").
Statuses: "correct", "wrong", "no_answer" (no `####` number; with `flexible`, no number at all).
"""

from __future__ import annotations

import re

import msgspec

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.producers.rewards.answers import ground_truth, parse_number

_NUMBER = r"-?\$?\s*(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_STRICT = re.compile(rf"####\s*({_NUMBER})")
_ANY_NUMBER = re.compile(_NUMBER)


class Gsm8kReward(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    key: str = "ground_truth"
    """The metadata key of the reference answer."""
    flexible: bool = False
    """Take the last number anywhere in the response instead of requiring `#### <number>`."""

    def __call__(self, sample: RewardInput) -> RewardOutput:
        gold_text = ground_truth(sample, self.key)
        gold = parse_number(gold_text.rpartition("####")[2])
        if gold is None:
            raise ValueError(f"prompt {sample.prompt_id!r}: metadata[{self.key!r}] = "
                             f"{gold_text[-80:]!r} does not end in a number")
        pattern = _ANY_NUMBER if self.flexible else _STRICT
        found = pattern.findall(sample.response_text)
        answer = parse_number(found[-1]) if found else None
        if answer is None:
            return RewardOutput(reward=0.0, details={"parsed": 0.0}, status="no_answer")
        correct = answer == gold
        return RewardOutput(reward=float(correct), details={"parsed": 1.0},
                            status="correct" if correct else "wrong")
