"""`math`: the model's last `\\boxed{}` answer verified against the ground truth by math-verify
(Hugging Face's parser and verifier: LaTeX and plain expressions, sets, intervals, equations,
numbers compared symbolically or to a tolerance).

    reward = "math"                                   # metadata["ground_truth"], \\boxed required
    reward = { name = "math", options = { boxed_only = false } }   # any final expression

Statuses: "correct", "wrong", "no_boxed" (no closed `\\boxed{}`), "unparsable" (nothing
math-verify can read in it). A ground truth math-verify cannot read is the dataset's fault and
raises. math-verify's own timeouts (signal alarms) apply in the main thread, i.e. in a reward
worker process (sandbox.py), whose timeout bounds the call in any case.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import msgspec

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.producers.rewards.answers import ground_truth, last_boxed


class MathReward(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    key: str = "ground_truth"
    """The metadata key of the reference answer (veRL's reward_model.ground_truth lands there)."""
    boxed_only: bool = True
    """Score only the last `\\boxed{}` (veRL's MATH rule); false: without one, math-verify looks
    for the response's final answer anywhere in the text."""
    timeout_s: int = 3
    """math-verify's own limit per parse and per comparison, in whole seconds (signal.alarm)."""

    def __post_init__(self) -> None:
        if self.timeout_s < 1:
            raise ValueError(f"timeout_s ({self.timeout_s}) must be at least 1 second")

    def __call__(self, sample: RewardInput) -> RewardOutput:
        from math_verify import parse, verify  # ~1 s to import: only where a reward is scored

        timeout = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        gold = _parse_gold(ground_truth(sample, self.key), timeout)
        if not gold:
            raise ValueError(f"prompt {sample.prompt_id!r}: metadata[{self.key!r}] = "
                             f"{sample.metadata[self.key]!r} is not an answer math-verify can "
                             "parse")
        boxed = last_boxed(sample.response_text)
        if boxed is None and self.boxed_only:
            return RewardOutput(reward=0.0, details={"parsed": 0.0}, status="no_boxed")
        text = sample.response_text if boxed is None else f"\\boxed{{{boxed}}}"
        answer = parse(text, parsing_timeout=timeout)  # type: ignore[arg-type]
        if not answer:
            return RewardOutput(reward=0.0, details={"parsed": 0.0}, status="unparsable")
        correct = verify(gold, answer, timeout_seconds=timeout)
        return RewardOutput(reward=float(correct), details={"parsed": 1.0},
                            status="correct" if correct else "wrong")


@functools.lru_cache(maxsize=4096)  # a group's samples share their ground truth
def _parse_gold(text: str, timeout: int | None) -> list[Any]:
    from math_verify import parse

    if "$" not in text and "\\boxed" not in text:  # bare LaTeX ("\\frac{1}{2}", "(x+1)^2")
        return parse(f"${text}$", parsing_timeout=timeout) or parse(  # type: ignore[arg-type]
            text, parsing_timeout=timeout)  # type: ignore[arg-type]
    return parse(text, parsing_timeout=timeout)  # type: ignore[arg-type]
