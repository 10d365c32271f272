"""The arithmetic task: "a+b=" prompts, a verifiable reward, and a held-out eval set.

    problems = train_problems(seed=0, num_problems=64)       # [Problem], never an eval pair
    reward(RewardInput(..., response_text="125", metadata={"answer": "125"}))
    eval_problems()                                           # the fixed held-out set

Operands have up to `NUM_DIGITS` digits. Every (a, b) pair belongs to the train or the eval
split by a hash of the pair, so a recipe can draw training prompts forever from any seed and
never see an eval question. The answer is written most significant digit first, so the model
must see a carry coming before it writes the digit above it: the part a sloppy student (the
warm start, see `warmstart.py`) gets wrong and RL has to fix.
"""

from __future__ import annotations

import hashlib
import re

import msgspec
import numpy as np

from streamrl.hooks.rollout import RewardInput, RewardOutput

NUM_DIGITS = 2
"""Operands lie in [0, 10**NUM_DIGITS)."""
EVAL_FRACTION = 1 / 8
"""Share of all (a, b) pairs reserved for evaluation."""
NUM_EVAL = 256
"""Size of the default held-out eval set."""
_ANSWER = re.compile(r"-?[0-9]{1,18}")  # bounded: int() of a huge digit string is slow/raises


class Problem(msgspec.Struct, kw_only=True, frozen=True):
    prompt_id: str
    """Stable id: the question itself, e.g. "add:57+68"."""
    text: str
    """The prompt the model sees (after <bos>), e.g. "57+68="."""
    metadata: dict[str, str]
    """What the reward needs: {"answer": "125"}."""


def problem(a: int, b: int, num_digits: int = NUM_DIGITS) -> Problem:
    """The question a+b, operands zero-padded to `num_digits` (fixed width: digit i of every
    number sits at the same offset, which a tiny model finds without having to count)."""
    text = f"{a:0{num_digits}d}+{b:0{num_digits}d}="
    return Problem(prompt_id=f"add:{text[:-1]}", text=text, metadata={"answer": str(a + b)})


def is_eval_pair(a: int, b: int) -> bool:
    """Whether (a, b) is reserved for evaluation (a hash split: stable across runs and seeds)."""
    digest = hashlib.blake2b(f"{a}+{b}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") < EVAL_FRACTION * 2**32


def sample_pairs(
    rng: np.random.Generator, num_pairs: int, *, eval_split: bool, num_digits: int = NUM_DIGITS
) -> list[tuple[int, int]]:
    """`num_pairs` operand pairs from one split, uniformly over the split (rejection sampling)."""
    out: list[tuple[int, int]] = []
    hi = 10**num_digits
    while len(out) < num_pairs:
        a, b = (int(x) for x in rng.integers(0, hi, size=2))
        if is_eval_pair(a, b) == eval_split:
            out.append((a, b))
    return out


def train_problems(*, seed: int, num_problems: int, num_digits: int = NUM_DIGITS) -> list[Problem]:
    """Training prompts drawn from the train split; the same seed gives the same list."""
    rng = np.random.default_rng(seed)
    return [
        problem(a, b, num_digits)
        for a, b in sample_pairs(rng, num_problems, eval_split=False, num_digits=num_digits)
    ]


def eval_problems(num_problems: int = NUM_EVAL, *, num_digits: int = NUM_DIGITS) -> list[Problem]:
    """The held-out set: a fixed sample of eval-split pairs (seed-independent by design)."""
    rng = np.random.default_rng(20_240_601)
    pairs = sample_pairs(rng, num_problems, eval_split=True, num_digits=num_digits)
    return [problem(a, b, num_digits) for a, b in pairs]


def score(response_text: str, answer: str, finish_reason: str = "stop") -> RewardOutput:
    """Score one answer string. Untrusted input: never raises, whatever `response_text` is."""
    if finish_reason != "stop":  # "length", "abort", "error": the answer never finished
        return RewardOutput(reward=0.0, details={"format": 0.0}, status="truncated")
    text = response_text.strip() if isinstance(response_text, str) else ""
    if not _ANSWER.fullmatch(text):
        return RewardOutput(reward=0.0, details={"format": 0.0}, status="unparsable")
    if int(text) == int(answer):
        return RewardOutput(reward=1.0, details={"format": 1.0}, status="correct")
    return RewardOutput(reward=0.0, details={"format": 1.0}, status="wrong")


def reward(sample: RewardInput) -> RewardOutput:
    """The recipe's `RewardFn`: 1.0 for the exact sum, else 0.0 with a status saying why
    ("correct", "wrong", "unparsable", "truncated"). `details["format"]` is 1.0 when the
    response was a well-formed number that ended with the stop token.

    A missing reference answer is our bug, not the model's, and raises `ValueError`.
    """
    answer = sample.metadata.get("answer")
    if not isinstance(answer, str) or not _ANSWER.fullmatch(answer):
        raise ValueError(
            f"prompt {sample.prompt_id!r}: metadata['answer'] must be the reference sum as a "
            f"decimal string, got {answer!r}"
        )
    return score(sample.response_text, answer, sample.finish_reason)
