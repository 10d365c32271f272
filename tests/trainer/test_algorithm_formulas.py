"""Each algorithm against its paper's equation, written again here in numpy on a small fixed
batch: GSPO, GSPO-token, CISPO, the KL estimators, the entropy bonus, RLOO, REINFORCE++ and
DAPO's overlong shaping. Gradient directions are checked where the papers state them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrl.consumers.trainer.advantages import (
    overlong_penalty,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
)
from streamrl.consumers.trainer.losses import cispo, decoupled_ppo, gspo, gspo_token
from streamrl.hooks.train import AdvantageInput, LossInput
from streamrl.recipe.trainer import LossConfig

# Two sequences in two rows, lengths 3 and 2 (row 1's last position is not trained).
MASK = np.array([[1, 1, 1], [1, 1, 0]], bool)
OLD = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.7, 0.0]])
LOGP = np.array([[-0.9, -1.8, -0.6], [-1.6, -0.9, 0.0]])
ADV = np.array([[1.0, 1.0, 1.0], [-0.5, -0.5, 0.0]])


def make(logp: torch.Tensor, *, adv: np.ndarray = ADV, old: np.ndarray = OLD,
         prox: np.ndarray | None = None, mask: np.ndarray = MASK, **config: object) -> LossInput:
    return LossInput(
        logprobs=logp, old_logprobs=torch.tensor(old, dtype=torch.float32),
        proximal_logprobs=None if prox is None else torch.tensor(prox, dtype=torch.float32),
        advantages=torch.tensor(adv, dtype=torch.float32), loss_mask=torch.tensor(mask),
        versions=torch.zeros(mask.shape, dtype=torch.long), current_version=1,
        config=LossConfig(**config))  # type: ignore[arg-type]


def leaf(values: np.ndarray = LOGP) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).requires_grad_()


def gspo_numpy(logp, old, adv, mask, lo, hi):
    """Zheng et al. eq. 5-7: s_i = (prod_t pi/old)^(1/|y_i|), loss -(1/G) sum_i min(s A, clip)."""
    losses, grads = [], np.zeros_like(logp)
    for i in range(len(mask)):
        m = mask[i]
        s = np.exp(np.mean(logp[i][m] - old[i][m]))
        a = adv[i][m][0]
        unclipped, clipped = s * a, np.clip(s, lo, hi) * a
        losses.append(-min(unclipped, clipped))
        if unclipped <= clipped:  # d(s)/d(logp_t) = s / |y_i|
            grads[i][m] = -a * s / m.sum() / len(mask)
    return np.mean(losses), grads


@pytest.mark.parametrize("clip", [0.2, 0.1])
def test_gspo_is_the_sequence_level_clipped_objective(clip: float) -> None:
    logp = leaf()
    out = gspo(make(logp, clip_low=clip, clip_high=clip, aggregation="seq_mean"))
    out.loss.backward()
    want, grad = gspo_numpy(LOGP, OLD, ADV, MASK, 1 - clip, 1 + clip)
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(logp.grad.numpy(), grad, rtol=1e-5, atol=1e-7)
    # s_1 = exp(mean(-0.1, -0.2)) = 0.861 with A < 0: at clip 0.1 sequence 1 is clipped as a
    # whole (no gradient on any of its tokens); s_0 = 1.069 stays inside either range.
    assert (logp.grad[1] == 0).all() == (clip == 0.1) and (logp.grad[0] != 0).all()
    assert out.metrics["clip_fraction"] == pytest.approx(0.4 if clip == 0.1 else 0.0)


def test_gspo_token_equals_gspo_for_sequence_advantages() -> None:
    a, b = leaf(), leaf()
    out_a = gspo(make(a, aggregation="seq_mean", clip_low=0.05, clip_high=0.05))
    out_b = gspo_token(make(b, aggregation="seq_mean", clip_low=0.05, clip_high=0.05))
    out_a.loss.backward()
    out_b.loss.backward()
    assert float(out_a.loss.detach()) == pytest.approx(float(out_b.loss.detach()), rel=1e-6)
    torch.testing.assert_close(a.grad, b.grad)
    # ... and per-token advantages reach the tokens: flip one token's advantage, only its
    # gradient changes sign (the ratio's value, hence the clip, stays per sequence).
    adv = ADV.copy()
    adv[0, 1] = -1.0
    c = leaf()
    gspo_token(make(c, adv=adv, aggregation="seq_mean")).loss.backward()
    assert c.grad[0, 1] > 0 > c.grad[0, 0] and c.grad[0, 0] == c.grad[0, 2]


def test_gspo_centres_on_prox_and_weights_sequences_by_prox_over_mu() -> None:
    prox = OLD + np.array([[0.3, 0.3, 0.3], [-0.1, -0.1, 0.0]])
    logp = leaf()
    out = gspo(make(logp, prox=prox, aggregation="seq_mean", importance_cap=1.2))
    out.loss.backward()
    w = np.minimum(np.exp([0.3, -0.1]), 1.2)  # exp(mean log prox/mu), capped at C
    loss0, grad0 = gspo_numpy(LOGP[:1], prox[:1], ADV[:1], MASK[:1], 0.8, 1.2)
    loss1, grad1 = gspo_numpy(LOGP[1:], prox[1:], ADV[1:], MASK[1:], 0.8, 1.2)
    assert float(out.loss.detach()) == pytest.approx((w[0] * loss0 + w[1] * loss1) / 2, rel=1e-6)
    np.testing.assert_allclose(logp.grad.numpy(),
                               np.concatenate([w[0] * grad0, w[1] * grad1]) / 2, rtol=1e-5)
    assert out.metrics["truncated_fraction"] == pytest.approx(0.6)  # sequence 0's 3 tokens of 5


def test_cispo_keeps_the_gradient_of_clipped_tokens() -> None:
    """MiniMax-M1 eq. 4: J = (1/sum|o_i|) sum_i sum_t sg(clip(r)) A log pi."""
    logp = leaf()
    out = cispo(make(logp, clip_low=0.05, clip_high=0.05))
    out.loss.backward()
    r = np.clip(np.exp(LOGP - OLD), 0.95, 1.05)
    n = MASK.sum()
    assert float(out.loss) == pytest.approx(-(r * ADV * LOGP)[MASK].sum() / n, rel=1e-6)
    np.testing.assert_allclose(logp.grad.numpy(), np.where(MASK, -r * ADV / n, 0), rtol=1e-5)
    # token (0, 1) has r = exp(0.2) > 1 + eps with A > 0: PPO-clip gives it no gradient, CISPO
    # still raises its probability (gradient descent lowers -logp).
    ppo = leaf()
    decoupled_ppo(make(ppo, clip_low=0.05, clip_high=0.05)).loss.backward()
    assert ppo.grad[0, 1] == 0 and logp.grad[0, 1] < 0
    assert out.metrics["clip_fraction"] == 1.0  # every |log r| >= 0.1 > log 1.05


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty_estimators_and_their_pull_toward_the_reference(estimator: str) -> None:
    ref = LOGP + np.array([[0.2, -0.3, 0.0], [0.1, -0.4, 0.0]])
    x = ref - LOGP
    k = {"k1": -x, "k2": x ** 2 / 2, "k3": np.exp(x) - 1 - x}[estimator]
    base, logp = leaf(), leaf()
    plain = decoupled_ppo(make(base, aggregation="token_mean"))
    plain.loss.backward()
    inp = make(logp, aggregation="token_mean", kl_coef=0.5, kl_estimator=estimator)
    out = decoupled_ppo(LossInput(**{**{f: getattr(inp, f) for f in inp.__struct_fields__},
                                     "reference_logprobs": torch.tensor(ref).float()}))
    out.loss.backward()
    n = MASK.sum()
    assert float(out.loss - plain.loss) == pytest.approx(0.5 * k[MASK].sum() / n, rel=1e-5)
    assert out.metrics["kl_ref"] == pytest.approx(k[MASK].mean(), rel=1e-5)
    extra = (logp.grad - base.grad).numpy()
    if estimator != "k1":  # k2, k3: descent moves log pi toward log ref, from either side
        assert (np.sign(-extra[MASK]) == np.sign(x[MASK])).all()
    else:  # k1 = log pi - log ref: always pushes log pi down, by kl_coef / N per token
        np.testing.assert_allclose(extra[MASK], 0.5 / n, rtol=1e-5)


def test_entropy_bonus_lowers_the_loss_by_coef_times_mean_entropy() -> None:
    entropy = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.2, 9.0]], requires_grad=True)
    inp = make(leaf(), entropy_coef=0.1)
    plain = float(decoupled_ppo(inp).loss)
    out = decoupled_ppo(LossInput(**{**{f: getattr(inp, f) for f in inp.__struct_fields__},
                                     "entropy": entropy}))
    out.loss.backward()
    assert float(out.loss) == pytest.approx(plain - 0.1 * 4.0 / 5, rel=1e-6)
    assert entropy.grad[1, 2] == 0 and entropy.grad[0, 0] == pytest.approx(-0.1 / 5)
    assert out.metrics["entropy_mean"] == pytest.approx(0.8)


REWARDS = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 2.0])
GROUPS = ["a", "a", "a", "b", "b", "c", "solo"]
LENGTHS = [3, 1, 2, 2, 3, 1, 2]


def advantage_input() -> AdvantageInput:
    mask = np.zeros((len(REWARDS), 3), bool)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = True
    return AdvantageInput(rewards=torch.tensor(REWARDS, dtype=torch.float32), group_ids=GROUPS,
                          loss_mask=torch.tensor(mask))


def test_rloo_baseline_leaves_the_sample_out() -> None:
    want = []
    for i, g in enumerate(GROUPS):
        others = [REWARDS[j] for j, h in enumerate(GROUPS) if h == g and j != i]
        uniform = len({*others, REWARDS[i]}) == 1
        want.append(0.0 if not others or uniform else REWARDS[i] - np.mean(others))
    adv = rloo(advantage_input())
    np.testing.assert_allclose(adv[:, 0].numpy(), want, rtol=1e-6)  # [1, -.5, -.5, .5, -.5, 0, 0]
    assert (adv[advantage_input().loss_mask == 0] == 0).all()


@pytest.mark.parametrize("baseline", [False, True])
def test_reinforce_pp_normalizes_over_the_batch_tokens(baseline: bool) -> None:
    a = REWARDS.copy()
    if baseline:
        for g in set(GROUPS):
            members = [i for i, h in enumerate(GROUPS) if h == g]
            a[members] -= a[members].mean()
    tokens = np.repeat(a, LENGTHS)  # token-level, as the paper normalizes
    want = (a - tokens.mean()) / (tokens.std() + 1e-6)
    inp = advantage_input()
    adv = (reinforce_pp_baseline if baseline else reinforce_pp)(inp)
    np.testing.assert_allclose(adv[:, 0].numpy(), want, rtol=1e-5)
    assert float(adv[inp.loss_mask].mean()) == pytest.approx(0, abs=1e-6)
    assert (adv[~inp.loss_mask] == 0).all()


def test_overlong_penalty_ramps_over_the_buffer() -> None:
    lengths = torch.tensor([10, 12, 13, 14, 16, 17])
    got = overlong_penalty(lengths, max_new_tokens=16, buffer_tokens=4, penalty=1.0)
    # DAPO eq. 13 with L_max = 16, L_cache = 4: 0 up to 12, then (12 - |y|) / 4, -1 past 16
    np.testing.assert_allclose(got.numpy(), [0, 0, -0.25, -0.5, -1.0, -1.0])
