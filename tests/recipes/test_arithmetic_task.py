"""The arithmetic task: prompts, the split, and a reward that never raises on model output."""

from __future__ import annotations

import numpy as np
import pytest

from recipes.arithmetic.task import (
    NUM_DIGITS,
    eval_problems,
    is_eval_pair,
    problem,
    reward,
    score,
    train_problems,
)
from recipes.arithmetic.tokenizer import TOKENIZER
from streamrl.hooks.rollout import RewardInput


def sample(text: str, answer: str = "125", finish: str = "stop") -> RewardInput:
    return RewardInput(
        prompt_id="add:57+68",
        prompt_text="57+68=",
        prompt_tokens=TOKENIZER.encode("57+68=", bos=True),
        response_text=text,
        response_tokens=np.zeros(0, dtype=np.int32),
        finish_reason=finish,
        metadata={"answer": answer},
    )


@pytest.mark.parametrize(
    ("text", "finish", "value", "status"),
    [
        ("125", "stop", 1.0, "correct"),
        ("0125", "stop", 1.0, "correct"),  # the fixed-width answer format
        (" 125 ", "stop", 1.0, "correct"),
        ("025", "stop", 0.0, "wrong"),  # the forgotten carry
        ("-125", "stop", 0.0, "wrong"),
        ("125", "length", 0.0, "truncated"),
        ("125", "abort", 0.0, "truncated"),
        ("", "stop", 0.0, "unparsable"),
        ("12+5", "stop", 0.0, "unparsable"),
        ("1 25", "stop", 0.0, "unparsable"),
        ("١٢٥", "stop", 0.0, "unparsable"),  # Arabic-Indic digits: int() would accept them
        ("9" * 5000, "stop", 0.0, "unparsable"),  # int() of this raises in Python 3.11
        ("\ufffd\ufffd", "stop", 0.0, "unparsable"),
    ],
)
def test_reward_on_crafted_answers(text: str, finish: str, value: float, status: str) -> None:
    out = reward(sample(text, finish=finish))
    assert (out.reward, out.status) == (value, status)
    assert out.details["format"] == float(status in ("correct", "wrong"))


def test_reward_never_raises_on_garbage_tokens() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        ids = rng.integers(-3, TOKENIZER.vocab_size + 3, size=int(rng.integers(0, 10)))
        finish = ["stop", "length", "abort", "error"][int(rng.integers(0, 4))]
        out = reward(sample(TOKENIZER.decode(ids), finish=finish))
        assert out.reward in (0.0, 1.0)
        assert out.status in ("correct", "wrong", "unparsable", "truncated")


def test_missing_reference_answer_is_a_data_bug() -> None:
    with pytest.raises(ValueError, match="metadata"):
        reward(sample("125", answer="a lot"))
    assert score("125", "125").status == "correct"


def test_prompts_are_fixed_width_and_answers_exact() -> None:
    p = problem(7, 45)
    assert (p.text, p.metadata["answer"], p.prompt_id) == ("07+45=", "52", "add:07+45")
    lengths = {len(q.text) for q in train_problems(seed=3, num_problems=100)}
    assert lengths == {2 * NUM_DIGITS + 2}


def test_train_and_eval_splits_are_disjoint_and_stable() -> None:
    held_out = eval_problems()
    assert held_out == eval_problems()  # seed-independent by design
    assert len({p.prompt_id for p in held_out}) > 200  # mostly distinct questions
    train = train_problems(seed=1, num_problems=2000)
    assert train == train_problems(seed=1, num_problems=2000)
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in held_out}
    share = np.mean([is_eval_pair(a, b) for a in range(100) for b in range(100)])
    assert 0.09 < share < 0.16
