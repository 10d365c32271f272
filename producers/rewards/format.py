"""`format`: 1 when the response has the expected form, else 0; no ground truth needed. Usually
a small bonus next to a correctness reward:

    reward = [{ name = "math" }, { name = "format", weight = 0.1 }]
    [rollout.reward]                 # the whole response: a reasoning block, then an answer
    name = "format"
    options = { pattern = '(?s)<think>.*</think>.+', fullmatch = true }

Without a pattern the form is a closed `\\boxed{...}` with something in it. Statuses:
"formatted", "unformatted".
"""

from __future__ import annotations

import re

import msgspec

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.producers.rewards.answers import last_boxed


class FormatReward(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pattern: str | None = None
    """A Python regular expression the response must contain (None: a non-empty \\boxed{})."""
    fullmatch: bool = False
    """The pattern must match the whole response (stripped), not just a part of it."""

    def __post_init__(self) -> None:
        if self.pattern is None and self.fullmatch:
            raise ValueError("fullmatch applies to a pattern: set pattern or remove fullmatch")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ValueError(f"pattern {self.pattern!r} does not compile: {error}") from None

    def __call__(self, sample: RewardInput) -> RewardOutput:
        text = sample.response_text
        if self.pattern is None:
            boxed = last_boxed(text)
            ok = boxed is not None and bool(boxed.strip())
        elif self.fullmatch:
            ok = re.fullmatch(self.pattern, text.strip()) is not None
        else:
            ok = re.search(self.pattern, text) is not None
        return RewardOutput(reward=float(ok), status="formatted" if ok else "unformatted")
