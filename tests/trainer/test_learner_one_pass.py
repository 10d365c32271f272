"""A CPU step with one minibatch makes one policy forward, not two (the proximal logprobs are
that pass's, detached), and lands on the same weights, bit for bit, as the two-pass step: runs
recorded before the change still replay to their digests."""

from __future__ import annotations

import torch

from streamrl.consumers.trainer.advantages import grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.losses import decoupled_ppo
from streamrl.recipe.config import TrainerSection
from tests.trainer.helpers import sample, tiny_model

PROMPT = [1, 2, 3]
RESPONSES = [[4, 5, 6, 7], [8, 9], [12, 13, 14], [16, 17, 18, 19]]


def rows(version: int) -> list:
    return [sample(PROMPT, r, reward=float(i == version % 4), versions=[version] * len(r),
                   group_id=f"g{version}", sample_id=f"v{version}-{i}",
                   logprobs=[-3.0 + 0.1 * i] * len(r))
            for i, r in enumerate(RESPONSES)]


def test_one_policy_pass_is_bit_identical_to_the_separate_proximal_forward() -> None:
    setup = LearnerSetup(trainer=TrainerSection(batch_size=4, lr=1e-2), temperature=1.0,
                         advantage=grpo, loss=decoupled_ppo)
    one, two = Learner(tiny_model(seed=1), setup), Learner(tiny_model(seed=1), setup)
    two._one_policy_pass = lambda: False  # type: ignore[method-assign]  # the old way
    assert one._one_policy_pass()
    passes = {"one": 0, "two": 0}
    one.model.register_forward_hook(lambda *_: passes.__setitem__("one", passes["one"] + 1))
    two.model.register_forward_hook(lambda *_: passes.__setitem__("two", passes["two"] + 1))
    for version in range(1, 4):
        a = one.step(rows(version), [1.0] * 4, version=version)
        b = two.step(rows(version), [1.0] * 4, version=version)
        assert a["loss"] == b["loss"]
    assert (passes["one"], passes["two"]) == (3, 6)
    for name, tensor in one.hf_state_dict().items():
        assert torch.equal(tensor, two.hf_state_dict()[name]), name
