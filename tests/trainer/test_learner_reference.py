"""The learner's KL reference, entropy bonus and overlong shaping on a tiny real model: the
reference is the initial checkpoint (KL exactly 0 on the first step, positive after), a resumed
learner rebuilds the same reference and lands on bit-identical weights, and a missing reference
is a clear error."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import torch

from streamrl.consumers.trainer.advantages import grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.losses import gspo
from streamrl.models.checkpoint import save_checkpoint
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, LossConfig, OverlongConfig
from tests.trainer.helpers import sample, tiny_model

PROMPT = [1, 2, 3]
RESPONSES = [[4, 5, 6, 7], [8, 9], [12, 13, 14], [16, 17, 18, 19]]


def rows(version: int) -> list:
    return [sample(PROMPT, r, reward=float(i == version % 4), versions=[version] * len(r),
                   group_id=f"g{version}", sample_id=f"v{version}-{i}",
                   logprobs=[-3.0] * len(r))
            for i, r in enumerate(RESPONSES)]


def setup(reference: Path | None, **algorithm: object) -> LearnerSetup:
    loss_config = LossConfig(kl_coef=0.5, entropy_coef=0.01)
    trainer = TrainerSection(batch_size=4, lr=1e-2, minibatches=2, algorithm=AlgorithmConfig(
        loss_config=loss_config, **algorithm))  # type: ignore[arg-type]
    return LearnerSetup(trainer=trainer, temperature=1.0, advantage=grpo, loss=gspo,
                        reference=reference, max_new_tokens=4)


@pytest.fixture
def init(tmp_path: Path) -> Path:
    path = tmp_path / "init"
    save_checkpoint(tiny_model(seed=1), path)
    return path


def test_reference_is_the_initial_checkpoint_and_resume_rebuilds_it(init: Path,
                                                                    tmp_path: Path) -> None:
    learner = Learner.from_checkpoint(init, setup(init))
    first = learner.step(rows(1), [1.0] * 4, version=1)
    assert first["kl_ref"] > 0  # the second minibatch already moved away from ref
    assert first["entropy_mean"] > 0
    learner.save(tmp_path / "v1")
    second = learner.step(rows(2), [1.0] * 4, version=2)
    assert second["kl_ref"] > 0

    # A trainer restarted at v1 loads the reference from the initial checkpoint, not from v1.
    resumed = Learner.from_checkpoint(tmp_path / "v1", setup(init))
    again = resumed.step(rows(2), [1.0] * 4, version=2)
    assert again["kl_ref"] == second["kl_ref"]
    for name, tensor in learner.hf_state_dict().items():
        assert torch.equal(tensor, resumed.hf_state_dict()[name]), name

    # Had it taken the resumed weights as its reference, the step would differ.
    wrong = Learner.from_checkpoint(tmp_path / "v1", setup(tmp_path / "v1"))
    assert wrong.step(rows(2), [1.0] * 4, version=2)["kl_ref"] != second["kl_ref"]


def test_kl_is_exactly_zero_before_the_first_update(init: Path) -> None:
    one = setup(init)
    one = msgspec.structs.replace(one, trainer=msgspec.structs.replace(one.trainer,
                                                                       minibatches=1))
    assert Learner.from_checkpoint(init, one).step(rows(1), [1.0] * 4, version=1)["kl_ref"] == 0


def test_a_kl_term_without_a_reference_is_explained(init: Path) -> None:
    learner = Learner.from_checkpoint(init, setup(None))
    with pytest.raises(ValueError, match="kl_coef > 0 needs the run's initial checkpoint"):
        learner.step(rows(1), [1.0] * 4, version=1)


def test_overlong_shaping_penalizes_responses_near_the_cap(init: Path) -> None:
    overlong = OverlongConfig(buffer_tokens=2)
    learner = Learner.from_checkpoint(init, setup(init, overlong=overlong))
    metrics = learner.step(rows(1), [1.0] * 4, version=1)
    # max_new_tokens 4, buffer 2: lengths 4, 2, 3, 4 -> -1, 0, -0.5, -1
    assert metrics["overlong_penalty_mean"] == pytest.approx(-2.5 / 4)
