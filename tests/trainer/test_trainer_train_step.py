"""End to end on a tiny model: GRPO + decoupled PPO steps make the rewarded answer likelier."""

from __future__ import annotations

import torch

from streamrl.consumers.trainer import (
    LossConfig,
    LossInput,
    TrainBatch,
    build_batch,
    decoupled_ppo,
    grpo,
)
from streamrl.models import CausalLM, token_logprobs
from tests.trainer.helpers import sample, tiny_model

PROMPT = [1, 2, 3]
RESPONSES = [[4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
REWARDS = [1.0, 0.0, 0.0, 0.0]


def logprobs(model: CausalLM, batch: TrainBatch) -> torch.Tensor:
    hidden = model(batch.tokens, batch.positions, return_hidden=True).hidden
    return token_logprobs(hidden, model.lm_head.weight, batch.targets)[0]


def response_logprob(model: CausalLM, batch: TrainBatch) -> torch.Tensor:
    with torch.no_grad():
        return (logprobs(model, batch) * batch.loss_mask).sum(dim=1)  # [B]


def test_grpo_with_decoupled_ppo_raises_the_rewarded_response() -> None:
    model = tiny_model(seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    config = LossConfig()

    def rollout(version: int) -> TrainBatch:
        # The engine's logprobs: the current weights, slightly perturbed (a different kernel).
        probe = build_batch([sample(PROMPT, r, group_id="g", sample_id=str(i))
                             for i, r in enumerate(RESPONSES)])
        lp = (logprobs(model, probe).detach() - 0.01)[probe.loss_mask].view(4, 4)
        return build_batch([sample(PROMPT, r, logprobs=lp[i].tolist(), reward=REWARDS[i],
                                   versions=[version] * 4, group_id="g", sample_id=str(i))
                            for i, r in enumerate(RESPONSES)])

    start = response_logprob(model, rollout(0))
    for version in range(3):
        batch = rollout(version)
        advantages = grpo(batch.advantage_input())
        with torch.no_grad():
            proximal = logprobs(model, batch)
        for _ in range(2):  # two updates per batch, the second one off-policy
            out = decoupled_ppo(LossInput(
                logprobs=logprobs(model, batch), old_logprobs=batch.old_logprobs,
                proximal_logprobs=proximal, advantages=advantages, loss_mask=batch.loss_mask,
                versions=batch.versions, current_version=version + 1, config=config))
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            assert all(torch.isfinite(torch.tensor(v)) for v in out.metrics.values())
    end = response_logprob(model, rollout(3))
    gain = end - start
    assert gain[0] > 1.0, gain  # the rewarded response became likelier
    assert (gain[1:] < 0).all(), gain  # and the unrewarded ones less likely
