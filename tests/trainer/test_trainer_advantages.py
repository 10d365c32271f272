"""Advantages: group-relative values, silence (0, never NaN) where there is nothing to learn."""

from __future__ import annotations

import math

import torch

from streamrl.consumers.trainer import (
    AdvantageInput,
    BatchConfig,
    build_batch,
    dr_grpo,
    grpo,
    reinforce_baseline,
)
from tests.trainer.helpers import sample

# Interleaved on purpose: groups are found by id, not by position.
GROUPS = ["a", "single", "a", "uniform", "a", "uniform", "a", "uniform"]
REWARDS = [1.0, 0.7, 0.0, 0.3, 0.0, 0.3, 1.0, 0.3]


def inp(mask: torch.Tensor | None = None) -> AdvantageInput:
    mask = torch.ones(8, 3, dtype=torch.bool) if mask is None else mask
    return AdvantageInput(rewards=torch.tensor(REWARDS), group_ids=GROUPS, loss_mask=mask)


def test_grpo_normalizes_within_each_group() -> None:
    adv = grpo(inp())
    # Group a: mean 0.5, sample std sqrt(1/3); singles and uniform groups: exactly 0.
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    expected = [a, 0, -a, 0, -a, 0, a, 0]
    assert torch.allclose(adv[:, 0], torch.tensor(expected), atol=1e-6)
    assert torch.equal(adv[:, 0][[1, 3, 5, 7]], torch.zeros(4))  # exact, not rounding residue
    assert torch.equal(adv, adv[:, :1].expand(8, 3))  # the same value on every trained token


def test_dr_grpo_only_centres() -> None:
    adv = dr_grpo(inp())[:, 0]
    assert torch.allclose(adv, torch.tensor([0.5, 0, -0.5, 0, -0.5, 0, 0.5, 0]))


def test_reinforce_uses_the_batch_mean() -> None:
    adv = reinforce_baseline(inp())[:, 0]
    assert torch.allclose(adv, torch.tensor(REWARDS) - sum(REWARDS) / 8)
    one = AdvantageInput(rewards=torch.tensor([3.0]), group_ids=["x"],
                         loss_mask=torch.ones(1, 2, dtype=torch.bool))
    assert torch.equal(reinforce_baseline(one), torch.zeros(1, 2))


def test_untrained_positions_get_exactly_zero_and_nothing_is_nan() -> None:
    mask = torch.rand(8, 3, generator=torch.Generator().manual_seed(0)) > 0.5
    for fn in (grpo, dr_grpo, reinforce_baseline):
        adv = fn(inp(mask))
        assert adv.dtype == torch.float32 and adv.shape == (8, 3)
        assert torch.isfinite(adv).all()
        assert torch.equal(adv[~mask], torch.zeros(int((~mask).sum())))
    # Only single-sample groups, or identical huge rewards: still 0, not NaN / inf.
    for rewards, groups in (([1.0, 2.0], ["x", "y"]), ([1e30, 1e30], ["x", "x"])):
        silent = AdvantageInput(rewards=torch.tensor(rewards), group_ids=groups,
                                loss_mask=torch.ones(2, 2, dtype=torch.bool))
        assert torch.equal(grpo(silent), torch.zeros(2, 2))


def test_packed_rows_carry_each_samples_advantage() -> None:
    samples = [sample([1], [2, 3], reward=r, group_id="g", sample_id=str(i))
               for i, r in enumerate([1.0, 0.0, 0.0])]
    batch = build_batch(samples, BatchConfig(pack_row_tokens=6))
    assert batch.tokens.shape[0] == 2  # two samples share row 0
    adv = grpo(batch.advantage_input())
    per_sample = grpo(build_batch(samples).advantage_input())[:, 0]
    for i in range(3):
        on_tokens = adv[(batch.segments == i) & batch.loss_mask]
        assert torch.allclose(on_tokens, per_sample[i].expand(2))
