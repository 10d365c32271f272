"""The SFT warm start: deterministic bytes for a seed, sloppy targets, and it learns the format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recipes.arithmetic.evaluate import evaluate
from recipes.arithmetic.task import eval_problems
from recipes.arithmetic.warmstart import sloppy_sum, warm_start
from streamrl.models import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls (tests/conftest.py)


def test_sloppy_sum_drops_carries_at_the_given_rate() -> None:
    rng = np.random.default_rng(0)
    assert sloppy_sum(57, 68, rng, 0.0) == "125"
    assert sloppy_sum(57, 68, rng, 1.0) == "015"  # each digit summed mod 10
    assert sloppy_sum(7, 1, rng, 1.0) == "008"  # no carry: always right, zero-padded
    answers = [sloppy_sum(57, 68, rng, 0.5) for _ in range(2000)]
    assert set(answers) == {"125", "115", "025", "015"}
    assert 0.2 < answers.count("125") / 2000 < 0.3  # both carries kept: (1 - 0.5) ** 2


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_same_seed_same_checkpoint_bytes(tmp_path: Path, moe: bool) -> None:
    kw = dict(steps=3, batch_size=8, moe=moe, progress=False)
    a = warm_start(tmp_path / "a", seed=5, **kw)
    b = warm_start(tmp_path / "b", seed=5, **kw)
    c = warm_start(tmp_path / "c", seed=6, **kw)
    weights = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]
    assert load_checkpoint(a).config.is_moe == moe


def test_short_warm_start_learns_the_answer_format(tmp_path: Path) -> None:
    # The full warm start (800 steps, 20-70 s) is too slow for a unit test; 60 small steps
    # already teach the answer format (digits, then <stop>) while leaving the sums wrong.
    path = warm_start(tmp_path / "w", seed=0, steps=60, batch_size=16, progress=False)
    report = evaluate(load_checkpoint(path), eval_problems(64))
    well_formed = report.statuses.get("correct", 0) + report.statuses.get("wrong", 0)
    assert well_formed >= 0.9 * report.num_samples, report.statuses
    assert report.mean_reward < 0.5
