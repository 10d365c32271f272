"""Train/rollout mismatch corrections: each policy's weights and rejected tokens on a hand-built
batch, the step metrics, the loss using the policy's weights, and a learner step reporting them.

The batch: two samples of three trained tokens (a fourth, untrained position holds -inf in
both policies, which must stay inert), with prox/mu ratios
    sample 0: 3, 1/4, 1      (product 3/4, geometric mean 0.9086)
    sample 1: 1.5, 1.2, 0.9  (product 1.62, geometric mean 1.1745)
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from streamrl.consumers.trainer import correction
from streamrl.consumers.trainer.advantages import grpo
from streamrl.consumers.trainer.batch import build_batch
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.losses import decoupled_ppo, gspo
from streamrl.hooks.train import CorrectionInput, LossInput
from streamrl.recipe.config import ConfigError, TrainerSection, load_recipe
from streamrl.recipe.hooks import Hooks
from streamrl.recipe.trainer import AlgorithmConfig, CorrectionConfig, LossConfig
from tests.trainer.helpers import sample, tiny_model

RATIOS = [[3.0, 0.25, 1.0], [1.5, 1.2, 0.9]]
MASK = torch.tensor([[True, True, True, False], [True, True, True, False]])


def batch(segments: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, rollout) logprobs [2, 4]: rollout -2 everywhere, train = rollout + log ratio."""
    rollout = torch.tensor([[-2.0, -2.0, -2.0, -math.inf]] * 2)
    train = rollout.clone()
    train[:, :3] += torch.log(torch.tensor(RATIOS))
    return train, rollout


def run(policy, cap: float = 2.0, floor: float | None = None,
        packed: bool = False) -> tuple[list[list[float]], list[list[bool]]]:
    train, rollout = batch()
    mask, segments = MASK, None
    if packed:  # both samples in one row, then padding
        train, rollout = train[:, :3].reshape(1, 6), rollout[:, :3].reshape(1, 6)
        train = torch.cat([train, torch.tensor([[0.0]])], 1)
        rollout = torch.cat([rollout, torch.tensor([[-math.inf]])], 1)
        mask = torch.tensor([[True] * 6 + [False]])
        segments = torch.tensor([[0, 0, 0, 1, 1, 1, -1]])
    out = policy(CorrectionInput(train_logprobs=train, rollout_logprobs=rollout, loss_mask=mask,
                                 config=CorrectionConfig(cap=cap, floor=floor),
                                 segments=segments))
    assert torch.isfinite(out.weight).all() and not bool((out.rejected & ~mask).any())
    assert bool((out.weight[~mask] == 0).all())
    if packed:
        return ([out.weight[0, :3].tolist(), out.weight[0, 3:6].tolist()],
                [out.rejected[0, :3].tolist(), out.rejected[0, 3:6].tolist()])
    return out.weight[:, :3].tolist(), out.rejected[:, :3].tolist()


def close(got: list[list[float]], want: list[list[float]]) -> None:
    assert got == [pytest.approx(row, rel=1e-5) for row in want]


def test_tis_truncates_each_token_at_the_cap() -> None:
    w, rejected = run(correction.tis)
    close(w, [[2.0, 0.25, 1.0], [1.5, 1.2, 0.9]])
    assert rejected == [[True, False, False], [False, False, False]]


def test_mis_token_masks_tokens_over_the_cap_and_keeps_the_rest_unweighted() -> None:
    w, rejected = run(correction.mis_token)
    close(w, [[0.0, 0.25, 1.0], [1.5, 1.2, 0.9]])
    assert rejected == [[True, False, False], [False, False, False]]
    w, rejected = run(correction.mis_token, cap=1.4, floor=0.3)  # an explicit floor
    close(w, [[0.0, 0.0, 1.0], [0.0, 1.2, 0.9]])


def test_icepop_masks_both_tails_outside_one_over_b_to_b() -> None:
    w, rejected = run(correction.icepop)  # band [0.5, 2]
    close(w, [[0.0, 0.0, 1.0], [1.5, 1.2, 0.9]])
    assert rejected == [[True, True, False], [False, False, False]]
    w, _ = run(correction.icepop, cap=1.25)  # band [0.8, 1.25]
    close(w, [[0.0, 0.0, 1.0], [0.0, 1.2, 0.9]])


def test_mis_sequence_weighs_by_the_product_and_masks_whole_samples() -> None:
    w, rejected = run(correction.mis_sequence)  # 0.75 and 1.62, both under 2
    close(w, [[0.75] * 3, [1.62] * 3])
    assert not any(map(any, rejected))
    w, rejected = run(correction.mis_sequence, cap=1.5)
    close(w, [[0.75] * 3, [0.0] * 3])
    assert rejected == [[False] * 3, [True] * 3]
    assert run(correction.mis_sequence, cap=1.5, packed=True) == (w, rejected)  # packed rows


def test_mis_geometric_uses_the_per_token_geometric_mean_two_sided() -> None:
    geo0, geo1 = 0.75 ** (1 / 3), 1.62 ** (1 / 3)  # 0.9086, 1.1745
    w, rejected = run(correction.mis_geometric, cap=1.2)  # band [0.833, 1.2]
    close(w, [[geo0] * 3, [geo1] * 3])
    w, rejected = run(correction.mis_geometric, cap=1.15)  # band [0.870, 1.15]
    close(w, [[geo0] * 3, [0.0] * 3])
    assert rejected == [[False] * 3, [True] * 3]
    w, rejected = run(correction.mis_geometric, cap=1.05)  # band [0.952, 1.05]: both out
    assert rejected == [[True] * 3, [True] * 3]
    assert run(correction.mis_geometric, cap=1.15, packed=True)[1] == [[False] * 3, [True] * 3]


def test_mismatch_metrics_are_means_over_trained_tokens() -> None:
    train, rollout = batch()
    out = correction.icepop(CorrectionInput(train_logprobs=train, rollout_logprobs=rollout,
                                            loss_mask=MASK, config=CorrectionConfig()))
    m = correction.mismatch_metrics(train, rollout, MASK, out)
    ratios = [r for row in RATIOS for r in row]
    assert m["mismatch_abs_logprob"] == pytest.approx(
        sum(abs(math.log(r)) for r in ratios) / 6, rel=1e-6)
    assert m["mismatch_kl"] == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 6,
                                             rel=1e-5)
    assert m["mismatch_rejected_fraction"] == pytest.approx(2 / 6)
    assert m["mismatch_weight_mean"] == pytest.approx((1 + 1.5 + 1.2 + 0.9) / 6, rel=1e-6)
    same = correction.mismatch_metrics(rollout, rollout, MASK)  # no mismatch, no policy
    assert same == {"mismatch_abs_logprob": 0.0, "mismatch_kl": 0.0}
    # Only sample 1's tokens were sampled by the weights prox has (the others are stale).
    fresh = torch.tensor([[False] * 4, [True] * 4])
    m = correction.mismatch_metrics(train, rollout, MASK, fresh=fresh)
    assert m["mismatch_abs_logprob_fresh"] == pytest.approx(
        sum(abs(math.log(r)) for r in RATIOS[1]) / 3, rel=1e-6)
    assert m["mismatch_kl_fresh"] == pytest.approx(
        sum(r - 1 - math.log(r) for r in RATIOS[1]) / 3, rel=1e-5)
    assert m["mismatch_fresh_fraction"] == pytest.approx(0.5)


@pytest.mark.parametrize("loss_fn", [decoupled_ppo, gspo])
def test_losses_take_the_correction_weight_and_masked_tokens_get_no_gradient(loss_fn) -> None:
    train, rollout = batch()
    behavior = correction.icepop(CorrectionInput(train_logprobs=train, rollout_logprobs=rollout,
                                                 loss_mask=MASK, config=CorrectionConfig()))
    logp = torch.where(MASK, train, 0.0).requires_grad_()
    adv = torch.where(MASK, 1.0, 0.0)
    out = loss_fn(LossInput(logprobs=logp, old_logprobs=rollout, proximal_logprobs=train,
                            advantages=adv, loss_mask=MASK, versions=torch.zeros_like(adv).long(),
                            current_version=1, config=LossConfig(), behavior=behavior))
    out.loss.backward()
    assert logp.grad is not None
    # On-policy w.r.t. prox, token mean over n = 6 tokens: the gradient is -w_t A / n per token.
    # GSPO writes L_i = w_t s_i A on each token t and s_i averages the sample's log-ratios, so
    # every token of sample i gets -(sum_t w_t) A / |y_i| / n: a token-level mask removes the
    # token's copy of L_i, not the token from s_i (use a sequence-level policy with GSPO).
    w = behavior.weight
    if loss_fn is decoupled_ppo:
        expected = -w / 6
    else:
        expected = torch.where(MASK, -w.sum(1, keepdim=True) / 3 / 6, 0.0)
    assert torch.allclose(logp.grad, expected, atol=1e-6)
    assert out.metrics["truncated_fraction"] == pytest.approx(2 / 6)
    assert out.metrics["tis_weight_max"] == pytest.approx(1.5)


def test_recipe_names_a_correction_and_refuses_mixing_it_with_the_loss_cap() -> None:
    AlgorithmConfig(correction="mis_geometric", correction_config=CorrectionConfig(cap=1.01))
    with pytest.raises(ValueError, match="did you mean 'icepop'"):
        AlgorithmConfig(correction="icepp")
    with pytest.raises(ValueError, match=r"correction_config\.cap"):
        AlgorithmConfig(correction="icepop", loss_config=LossConfig(cap_mode="mask"))
    with pytest.raises(ValueError, match="no correction is named"):
        AlgorithmConfig(correction_config=CorrectionConfig(cap=3.0))
    with pytest.raises(ValueError, match="cap must be > 1"):
        CorrectionConfig(cap=0.5)


def test_a_learner_step_reports_the_mismatch_and_masks_what_the_policy_rejects() -> None:
    """A real tiny model; the engine's logprobs are the trainer's own shifted by hand, so the
    mismatch is known: +log 3 on the first response token of sample 0 (masked by icepop)."""
    model = tiny_model(seed=3)
    prompt, responses = [1, 2, 3], [[4, 5, 6], [7, 8, 9]]
    algorithm = AlgorithmConfig(correction="icepop", loss="decoupled_ppo")
    setup = LearnerSetup(trainer=TrainerSection(batch_size=2, lr=1e-2, algorithm=algorithm),
                         temperature=1.0, advantage=grpo, loss=decoupled_ppo,
                         correction=correction.icepop)
    learner = Learner(model, setup)
    probe = [sample(prompt, r, reward=float(i), versions=[0] * 3, group_id="g",
                    sample_id=f"s{i}", logprobs=[0.0] * 3) for i, r in enumerate(responses)]
    b = build_batch(probe, algorithm.batch)
    with torch.no_grad():
        own = learner.logprobs(b)
    exact = [[float(own[i][b.loss_mask[i]][t]) for t in range(3)] for i in range(2)]
    exact[0][0] -= math.log(3.0)  # the engine under-rates this token by 3x
    rows = [sample(prompt, r, reward=float(i), versions=[0] * 3, group_id="g",
                   sample_id=f"s{i}", logprobs=exact[i]) for i, r in enumerate(responses)]
    metrics = learner.step(rows, [1.0, 1.0], version=1)
    assert metrics["mismatch_rejected_fraction"] == pytest.approx(1 / 6)
    assert metrics["mismatch_abs_logprob"] == pytest.approx(math.log(3) / 6, rel=1e-4)
    assert metrics["mismatch_kl"] == pytest.approx((3 - 1 - math.log(3)) / 6, rel=1e-4)
    assert metrics["truncated_fraction"] == pytest.approx(1 / 6)
    # Every token was sampled by version 0, the weights of step 1's prox: all fresh.
    assert metrics["mismatch_fresh_fraction"] == 1.0
    assert metrics["mismatch_abs_logprob_fresh"] == metrics["mismatch_abs_logprob"]


def test_a_recipe_names_the_correction_and_int4_qat(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "run" / "tiny.toml").read_text().replace(
        'step_hooks = ["tests.run.tiny_task:count_samples"]',
        'algorithm = { correction = "mis_geometric", correction_config = { cap = 1.01 } }\n'
        'qat = { int4 = { group_size = 16, targets = "linear" } }')
    (tmp_path / "recipe.toml").write_text(text)
    config, hooks = load_recipe(tmp_path / "recipe.toml")
    assert isinstance(hooks, Hooks) and hooks.correction is correction.mis_geometric
    assert LearnerSetup.of_run(config, hooks).correction is correction.mis_geometric
    assert config.trainer.qat is not None and config.trainer.qat.int4 is not None
    (tmp_path / "lora.toml").write_text(text + "\n[trainer.lora]\nrank = 2\n")
    with pytest.raises(ConfigError, match=r"trainer\.qat\.int4 needs"):
        load_recipe(tmp_path / "lora.toml")
    (tmp_path / "fp8.toml").write_text(text + '\n[weights]\ndtype = "float8_e4m3fn"\n')
    with pytest.raises(ConfigError, match=r"needs weights\.dtype unset"):
        load_recipe(tmp_path / "fp8.toml")
