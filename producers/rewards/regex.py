r"""`regex`: the answer a recipe's pattern extracts from the response, against the ground truth.

    reward = { name = "regex", options = { pattern = 'Answer:\s*(\S+)' } }

The last match counts; its group named `answer`, else its first group, else the whole match is
the answer, compared with the ground truth after stripping both (`ignore_case` optional).
Statuses: "correct", "wrong", "no_answer" (no match). A pattern that does not compile is refused
when the recipe loads. Patterns run on untrusted text: one that backtracks catastrophically is
cut off by the reward timeout (sandbox.py).
"""

from __future__ import annotations

import re

import msgspec

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.producers.rewards.answers import ground_truth


class RegexReward(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pattern: str
    """A Python regular expression (`re` syntax; flags inline, e.g. "(?i)")."""
    key: str = "ground_truth"
    """The metadata key of the reference answer."""
    ignore_case: bool = False
    """Compare the extracted answer case-insensitively."""

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(f"pattern {self.pattern!r} does not compile: {error}") from None

    def __call__(self, sample: RewardInput) -> RewardOutput:
        gold = ground_truth(sample, self.key).strip()
        compiled = re.compile(self.pattern)  # re's own cache makes this a lookup
        last = None
        for last in compiled.finditer(sample.response_text):  # noqa: B007
            pass
        if last is None:
            return RewardOutput(reward=0.0, details={"parsed": 0.0}, status="no_answer")
        group = ("answer" if "answer" in compiled.groupindex
                 else 1 if compiled.groups else 0)
        answer = (last.group(group) or "").strip()
        if self.ignore_case:
            gold, answer = gold.casefold(), answer.casefold()
        correct = answer == gold
        return RewardOutput(reward=float(correct), details={"parsed": 1.0},
                            status="correct" if correct else "wrong")
