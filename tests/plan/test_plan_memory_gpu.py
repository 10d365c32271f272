"""On one GPU: the planner's trainer memory for a small Qwen3 matches the peak that
`torch.cuda.max_memory_allocated` reports for a real training step, within 15%, with and
without recompute (bench/plan_memory.py has the setup and records the figures)."""

from __future__ import annotations

import pytest
import torch

from bench.plan_memory import SHAPE, measure

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("recompute", [False, True], ids=["no_recompute", "recompute"])
def test_trainer_memory_matches_the_measured_peak(recompute: bool) -> None:
    case = measure(SHAPE, recompute=recompute, device=torch.device("cuda"))
    assert case["ratio"] == pytest.approx(1.0, abs=0.15), case
