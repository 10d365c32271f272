"""Losses: on-policy equals policy gradient, the clip and the importance cap act exactly where
documented, masked tokens are inert even at -inf."""

from __future__ import annotations

import math

import pytest
import torch

from streamrl.consumers.trainer import LossConfig, LossInput, decoupled_ppo, ppo_tis

EPS = 0.2
LOSSES = [decoupled_ppo, ppo_tis]


def make(logp: torch.Tensor, adv: torch.Tensor, *, old: torch.Tensor | None = None,
         prox: torch.Tensor | None = None, mask: torch.Tensor | None = None,
         versions: torch.Tensor | None = None, **config) -> LossInput:
    mask = torch.ones_like(adv, dtype=torch.bool) if mask is None else mask
    return LossInput(
        logprobs=logp, old_logprobs=logp.detach() if old is None else old,
        proximal_logprobs=prox, advantages=adv, loss_mask=mask,
        versions=torch.full_like(adv, 5, dtype=torch.long) if versions is None else versions,
        current_version=7, config=LossConfig(**config))


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).requires_grad_()


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_on_policy_is_the_plain_policy_gradient(loss_fn) -> None:
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g) * 3).requires_grad_()
    adv = torch.randn(3, 5, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.3
    n = int(mask.sum())
    out = loss_fn(make(logp, adv, prox=logp.detach(), mask=mask))
    out.loss.backward()
    assert torch.allclose(out.loss, -(adv * mask).sum() / n)
    assert torch.allclose(logp.grad, -adv * mask / n)  # -A grad(logp) / N
    m = out.metrics
    assert m["clip_fraction"] == 0 and m["truncated_fraction"] == 0
    assert m["ratio_mean"] == pytest.approx(1) and m["tis_weight_max"] == pytest.approx(1)
    assert m["approx_kl_old"] == pytest.approx(0, abs=1e-7)
    assert m["staleness_mean"] == 2 and m["num_tokens"] == n


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_clip_acts_exactly_beyond_one_plus_minus_eps(loss_fn) -> None:
    d = 1e-3
    ratios = [1 + EPS - d, 1 + EPS + d, 0.5, 1 - EPS + d, 1 - EPS - d, 1.5]
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    old = torch.full((6,), -1.0)
    logp = (old + torch.log(torch.tensor(ratios))).requires_grad_()
    out = loss_fn(make(logp, adv, old=old, prox=old.clone()))
    out.loss.backward()
    r = torch.tensor(ratios)
    clipped = torch.tensor([False, True, False, False, True, False])
    assert torch.allclose(logp.grad, torch.where(clipped, 0.0, -r * adv / 6))
    assert out.metrics["clip_fraction"] == pytest.approx(2 / 6)
    # The value is min(r A, clip(r) A).
    expected = -torch.minimum(r * adv, r.clamp(1 - EPS, 1 + EPS) * adv).mean()
    assert torch.allclose(out.loss, expected)


def test_importance_weights_are_capped_at_c() -> None:
    C, mismatch = 2.0, 5.0
    old = torch.full((4,), -2.0)
    prox = old + math.log(mismatch)  # the trainer finds these tokens 5x likelier than mu did
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    # Decoupled: w = min(prox / mu, C) = 2, ratio pi / prox = 1 -> gradient -C A / N.
    logp = prox.clone().requires_grad_()
    out = decoupled_ppo(make(logp, adv, old=old, prox=prox, importance_cap=C))
    out.loss.backward()
    assert torch.allclose(logp.grad, -C * adv / 4)
    assert out.metrics["tis_weight_max"] == C and out.metrics["truncated_fraction"] == 1
    # PPO-TIS without prox: PPO would weight the A < 0 tokens by r = 5; TIS caps that at C.
    # (The A > 0 tokens sit beyond 1 + eps of the sampler and are clipped.)
    logp = prox.clone().requires_grad_()
    out = ppo_tis(make(logp, adv, old=old, importance_cap=C))
    out.loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([0.0, C, 0.0, C]) / 4)
    assert out.metrics["tis_weight_max"] == C
    # Mask mode drops such tokens instead.
    logp = prox.clone().requires_grad_()
    out = decoupled_ppo(make(logp, adv, old=old, prox=prox, importance_cap=C, cap_mode="mask"))
    out.loss.backward()
    assert torch.equal(logp.grad, torch.zeros(4))
    # Below the cap the weight is the exact ratio: PPO-TIS is then plain PPO against mu.
    logp = (old + math.log(1.1)).requires_grad_()
    out = ppo_tis(make(logp, adv, old=old, importance_cap=C))
    out.loss.backward()
    assert torch.allclose(logp.grad, -1.1 * adv / 4)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_masked_tokens_are_inert_even_at_minus_inf(loss_fn) -> None:
    inf, nan = float("inf"), float("nan")
    mask = torch.tensor([[True, True, False, False]])
    logp = leaf([[-1.0, -1e9, -inf, -inf]])  # -1e9: a trained token the policy now rules out
    old = torch.tensor([[-1.2, -0.5, -inf, nan]])
    prox = torch.tensor([[-1.1, -0.7, nan, -inf]])
    adv = torch.tensor([[1.0, -1.0, nan, 5.0]])
    for aggregation in ("token_mean", "seq_mean"):
        logp.grad = None
        out = loss_fn(make(logp, adv, old=old, prox=prox, mask=mask, aggregation=aggregation))
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(logp.grad).all()
        assert torch.equal(logp.grad[0, 2:], torch.zeros(2))
        assert all(math.isfinite(v) for v in out.metrics.values())
    empty = loss_fn(make(logp, adv, old=old, mask=torch.zeros_like(mask)))
    assert empty.loss.item() == 0 and empty.metrics["num_tokens"] == 0


def test_aggregation_weighs_tokens_or_samples() -> None:
    # On-policy, so each trained token's loss is -A: row 0 three tokens of A=1, row 1 one of A=-1.
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    logp = torch.full((2, 3), -1.0, requires_grad=True)

    def loss(**config) -> float:
        return decoupled_ppo(make(logp, adv, mask=mask, **config)).loss.item()

    assert loss() == pytest.approx(-(3 - 1) / 4)
    assert loss(aggregation="seq_mean") == pytest.approx(-(1 - 1) / 2)
    assert loss(aggregation="seq_sum_norm", norm_tokens=10) == pytest.approx(-(3 - 1) / 20)
    # Packed: both samples in one row, told apart by segments.
    packed = LossInput(logprobs=logp.reshape(1, 6)[:, :4], old_logprobs=torch.full((1, 4), -1.0),
                       proximal_logprobs=None, advantages=torch.tensor([[1.0, 1, 1, -1]]),
                       loss_mask=torch.ones(1, 4, dtype=torch.bool), segments=torch.tensor(
                           [[0, 0, 0, 1]]), versions=torch.zeros(1, 4, dtype=torch.long),
                       current_version=0, config=LossConfig(aggregation="seq_mean"))
    assert decoupled_ppo(packed).loss.item() == pytest.approx(0)


def test_config_mistakes_are_explained() -> None:
    with pytest.raises(ValueError, match="norm_tokens"):
        LossConfig(aggregation="seq_sum_norm")
    with pytest.raises(ValueError, match="clip_low"):
        LossConfig(clip_low=1.5)
    with pytest.raises(ValueError, match="importance_cap"):
        LossConfig(importance_cap=0.5)
