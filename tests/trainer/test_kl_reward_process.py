"""KL as a reward penalty, per-token (process) rewards and the producer-scored reference, on
small fixed batches and a tiny real model: each formula against numpy written from its
definition, the producer's reference against the learner's own, and a recipe that asks for the
producer's reference on records without it refused with the sample named."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch

from streamrl.consumers.trainer.advantages import grpo, process
from streamrl.consumers.trainer.batch import TrainBatch, build_batch
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.losses import decoupled_ppo
from streamrl.hooks.rollout import RolloutSample
from streamrl.hooks.train import AdvantageFn, AdvantageInput
from streamrl.models.checkpoint import save_checkpoint
from streamrl.producers.reference import ReferenceScorer
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import (
    AlgorithmConfig,
    BatchConfig,
    ComputeConfig,
    KLConfig,
    LossConfig,
)
from tests.trainer.helpers import sample, tiny_model

PROMPT = [1, 2, 3]
RESPONSES = [[4, 5, 6, 7], [8, 9], [12, 13, 14], [16, 17, 18, 19]]
GROUPS = ["a", "a", "b", "b"]
MASKS = [[True, True, False, True], [True, True], [True, True, True], [False, True, True, True]]


def _returns(r: list[float]) -> np.ndarray:
    return np.cumsum(np.asarray(r, np.float64)[::-1])[::-1]


def _process_numpy(token_rewards: list[list[float]], masks: list[list[bool]],
                   groups: list[str]) -> list[np.ndarray]:
    returns = [_returns(r) for r in token_rewards]
    adv = []
    for i, (g, m) in enumerate(zip(groups, masks, strict=True)):
        pool = np.concatenate([ret[np.array(mm)] for ret, mm, gg
                               in zip(returns, masks, groups, strict=True) if gg == g])
        a = (returns[i] - pool.mean()) / (pool.std() + 1e-6)
        adv.append(np.where(np.array(m), a, 0.0) if pool.max() != pool.min() else
                   np.zeros(len(m)))
    return adv


def _rows(token_rewards: list[list[float]] | None = None,
          rewards: list[float] | None = None) -> list:
    rows = []
    for i, resp in enumerate(RESPONSES):
        s = sample(PROMPT, resp, mask=MASKS[i], group_id=GROUPS[i], sample_id=f"s{i}",
                   reward=(rewards or [0.0] * 4)[i])
        if token_rewards is not None:
            s = msgspec.structs.replace(s, token_rewards=np.array(token_rewards[i], np.float32))
        rows.append(s)
    return rows


def _at_responses(batch: TrainBatch, per_position: torch.Tensor) -> list[np.ndarray]:
    """Each sample's values at its response targets, in token order (unpacked batch)."""
    return [per_position[i, len(PROMPT) - 1:len(PROMPT) - 1 + len(r)].double().numpy()
            for i, r in enumerate(RESPONSES[:batch.num_samples])]


TOKEN_REWARDS = [[0.5, 0.0, 0.25, 1.0], [0.0, -0.5], [0.1, 0.2, 0.3], [1.0, 0.0, 0.0, -1.0]]


@pytest.mark.parametrize("pack", [None, 16])
def test_process_advantages_are_group_normalized_reward_to_go(pack: int | None) -> None:
    batch = build_batch(_rows(TOKEN_REWARDS), BatchConfig(pack_row_tokens=pack))
    adv = process(batch.advantage_input())
    expected = _process_numpy(TOKEN_REWARDS, MASKS, GROUPS)
    got = [adv[batch.segments == i].double().numpy() for i in range(4)]
    for i, resp in enumerate(RESPONSES):  # response targets are the last R of the sample's
        np.testing.assert_allclose(got[i][len(PROMPT) - 1:len(PROMPT) - 1 + len(resp)],
                                   expected[i], rtol=1e-5, atol=1e-6)
    assert float(adv[~batch.loss_mask].abs().sum()) == 0


def test_process_without_token_rewards_is_length_weighted_grpo() -> None:
    rows = _rows(rewards=[1.0, 0.0, 0.0, 0.0])
    batch = build_batch(rows)
    assert batch.token_rewards is None  # no sample recorded any
    got = _at_responses(batch, process(batch.advantage_input()))
    # Group a: returns are 1 on s0's 3 trained tokens, 0 on s1's 2: mean 0.6, std sqrt(0.24).
    np.testing.assert_allclose(got[0], np.array([1, 1, 0, 1]) * 0.4 / (0.24 ** 0.5 + 1e-6),
                               rtol=1e-5)
    np.testing.assert_allclose(got[1], [-0.6 / (0.24 ** 0.5 + 1e-6)] * 2, rtol=1e-5)
    assert not got[2].any() and not got[3].any()  # group b: equal rewards, no signal
    # A batch mixing samples with and without token rewards: the latter's reward is on its
    # last response token.
    mixed = build_batch([rows[0], msgspec.structs.replace(
        rows[1], token_rewards=np.array([0.5, 0.5], np.float32))])
    assert mixed.token_rewards is not None
    assert _at_responses(mixed, mixed.token_rewards)[0].tolist() == [0, 0, 0, 1.0]


def _learner(tmp_path: Path, kl: KLConfig, advantage: AdvantageFn = grpo,
             estimator: str = "k1") -> Learner:
    init = tmp_path / "init"
    save_checkpoint(tiny_model(seed=1), init)
    trainer = TrainerSection(batch_size=4, lr=1e-2, algorithm=AlgorithmConfig(
        loss_config=LossConfig(kl_coef=0.5, kl_estimator=estimator),  # type: ignore[arg-type]
        kl=kl))
    return Learner.from_checkpoint(init, LearnerSetup(
        trainer=trainer, temperature=1.0, advantage=advantage, loss=decoupled_ppo,
        reference=init, max_new_tokens=4))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_in_reward_subtracts_beta_kl_before_the_advantage(tmp_path: Path,
                                                             estimator: str) -> None:
    rewards = [1.0, 0.0, 0.0, 1.0]
    learner = _learner(tmp_path, KLConfig(penalty="reward"), estimator=estimator)
    batch = build_batch(_rows(rewards=rewards))
    g = torch.Generator().manual_seed(0)
    prox = -torch.rand(batch.tokens.shape, generator=g) * 3
    ref = -torch.rand(batch.tokens.shape, generator=g) * 3
    metrics: dict[str, float] = {}
    adv = learner._advantages(batch, prox, ref, metrics)

    x = _at_responses(batch, ref - prox)
    kl = [(-xi if estimator == "k1" else np.exp(xi) - 1 - xi) * np.array(m)
          for xi, m in zip(x, MASKS, strict=True)]
    shaped = np.array([r - 0.5 * k.sum() for r, k in zip(rewards, kl, strict=True)])
    expected = grpo(AdvantageInput(rewards=torch.tensor(shaped, dtype=torch.float32),
                                   group_ids=GROUPS, loss_mask=batch.loss_mask))
    torch.testing.assert_close(adv, expected)
    assert metrics["kl_reward_mean"] == pytest.approx(
        sum(k.sum() for k in kl) / sum(map(sum, MASKS)), rel=1e-5)

    # The process estimator sees the penalty per token: reward on the last token, -beta*KL on
    # every trained one, then reward-to-go.
    learner.advantage_fn = process
    adv = learner._advantages(batch, prox, ref, {})
    token_rewards = [list(-0.5 * k) for k in kl]
    for t, r in zip(token_rewards, rewards, strict=True):
        t[-1] += r
    expected_tokens = _process_numpy(token_rewards, MASKS, GROUPS)
    for got, want in zip(_at_responses(batch, adv), expected_tokens, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_kl_in_reward_trains_with_no_kl_term_in_the_loss(tmp_path: Path) -> None:
    learner = _learner(tmp_path, KLConfig(penalty="reward"))
    metrics = learner.step(_rows(rewards=[1.0, 0.0, 0.0, 1.0]), [1.0] * 4, version=1)
    assert "kl_ref" not in metrics and metrics["kl_reward_mean"] == 0  # ref = pi at v0
    metrics = learner.step(_rows(rewards=[1.0, 0.0, 0.0, 1.0]), [1.0] * 4, version=2)
    assert metrics["kl_reward_mean"] != 0


def _scored_rows(init: Path) -> list:
    scorer = ReferenceScorer(init, temperature=1.0, device=torch.device("cpu"))
    rows = _rows(rewards=[1.0, 0.0, 0.0, 1.0])
    refs = scorer.score([RolloutSample(
        prompt_tokens=s.prompt_tokens, response_tokens=s.response_tokens, logprobs=s.logprobs,
        loss_mask=s.loss_mask, response_versions=s.response_versions, routed_experts=None,
        finish_reason="stop", seed=0, started_at=s.started_at, finished_at=s.finished_at)
        for s in rows])
    return [msgspec.structs.replace(s, reference_logprobs=r)
            for s, r in zip(rows, refs, strict=True)]


def test_producer_reference_matches_the_learners_own(tmp_path: Path) -> None:
    learner = _learner(tmp_path, KLConfig(reference="producer"))
    rows = _scored_rows(tmp_path / "init")
    batch = build_batch(rows)
    recorded = learner._reference_logprobs(batch)
    assert recorded is batch.reference_logprobs  # no second model in the learner
    assert learner._reference is None
    own = Learner.logprobs(learner, batch)  # the learner's weights are still the initial ones
    torch.testing.assert_close(torch.where(batch.loss_mask, recorded, 0),
                               torch.where(batch.loss_mask, own.detach(), 0),
                               rtol=0, atol=1e-5)
    assert learner.step(rows, [1.0] * 4, version=1)["kl_ref"] < 1e-6


def test_producer_reference_missing_from_the_records_is_refused(tmp_path: Path) -> None:
    learner = _learner(tmp_path, KLConfig(reference="producer"))
    rows = _scored_rows(tmp_path / "init")
    rows[2] = msgspec.structs.replace(rows[2], reference_logprobs=None)
    with pytest.raises(ValueError, match=r"sample 's2' has no reference_logprobs.*"
                                         r"set reference = \"trainer\""):
        learner.step(rows, [1.0] * 4, version=1)


def test_a_kl_section_without_kl_coef_is_refused() -> None:
    with pytest.raises(ValueError, match=r"set loss_config\.kl_coef > 0"):
        AlgorithmConfig(kl=KLConfig(penalty="reward"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_producer_reference_in_bf16_on_cuda_is_close_to_the_learners(tmp_path: Path) -> None:
    """The GPU pairing: a bf16 producer copy against the bf16-autocast learner's own logprobs
    of the same initial weights; they differ by rounding only (KL per token far below 1e-2)."""
    init = tmp_path / "init"
    save_checkpoint(tiny_model(seed=1), init)
    device = torch.device("cuda")
    scorer = ReferenceScorer(init, temperature=1.0, device=device, dtype=torch.bfloat16)
    rows = _rows(rewards=[1.0, 0.0, 0.0, 1.0])
    refs = scorer.score([RolloutSample(
        prompt_tokens=s.prompt_tokens, response_tokens=s.response_tokens, logprobs=s.logprobs,
        loss_mask=s.loss_mask, response_versions=s.response_versions, routed_experts=None,
        finish_reason="stop", seed=0, started_at=s.started_at, finished_at=s.finished_at)
        for s in rows])
    rows = [msgspec.structs.replace(s, reference_logprobs=r)
            for s, r in zip(rows, refs, strict=True)]
    trainer = TrainerSection(batch_size=4, lr=1e-2, minibatches=1, algorithm=AlgorithmConfig(
        loss_config=LossConfig(kl_coef=0.5), kl=KLConfig(reference="producer")),
        compute=ComputeConfig(device="cuda", precision="bf16"))
    learner = Learner.from_checkpoint(init, LearnerSetup(
        trainer=trainer, temperature=1.0, advantage=grpo, loss=decoupled_ppo, reference=init))
    assert 0 <= learner.step(rows, [1.0] * 4, version=1)["kl_ref"] < 1e-2


def test_every_advantage_and_loss_name_resolves_to_its_hook() -> None:
    from streamrl.hooks.resolve import resolve
    from streamrl.hooks.train import LossFn
    from streamrl.recipe.trainer import ADVANTAGES, LOSSES

    assert resolve(ADVANTAGES["process"], AdvantageFn, what="advantage") is process
    for path in ADVANTAGES.values():
        assert callable(resolve(path, AdvantageFn, what="advantage"))
    for path in LOSSES.values():
        assert callable(resolve(path, LossFn, what="loss"))


def test_producer_reference_with_an_external_engine_is_refused(tmp_path: Path) -> None:
    from streamrl.recipe.config import ConfigError, load_config
    from tests.helpers import TINY

    text = TINY.read_text().replace(
        "max_new_tokens = 3", 'max_new_tokens = 3\nengine_factory = "my.engines:sglang"')
    text += ('\n[trainer.algorithm]\nloss_config = { kl_coef = 0.1 }\n'
             'kl = { reference = "producer" }\n')
    recipe = tmp_path / "ext.toml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=r"needs the embedded torch engine.*"
                                          r"use reference = \"trainer\""):
        load_config(recipe)
