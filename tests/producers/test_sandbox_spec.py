"""A producer's reward workers build the reward from the recipe's spec (producers/rewards/
sandbox.py), so anything a recipe can name scores in them as it does in-process, even a reward
that pickle cannot send (a closure made at import); a spec that cannot be built, in the producer
or in a worker, is refused when the producer starts, never at its first sample."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.producers.rewards.sandbox import RewardSandbox, RewardSandboxError
from streamrl.recipe.rewards import RewardRecipe


def _per_char(bonus: float):  # a factory, as a user's module might have one
    def reward(sample: RewardInput) -> RewardOutput:
        tokens = tuple(bonus for _ in sample.response_tokens)
        return RewardOutput(reward=sum(tokens), details={"chars": len(sample.response_text)},
                            status="counted", token_rewards=tokens)
    return reward


per_char = _per_char(0.25)  # a closure: pickle cannot send it by reference

REWARD = ('reward = [{ name = "exact", options = { key = "answer" } }, '
          '{ name = "tests.producers.test_sandbox_spec:per_char", weight = 0.5 }]')


def sample(response: str) -> RewardInput:
    return RewardInput(
        prompt_id="p-1", prompt_text="12=", prompt_tokens=np.zeros(3, np.int32),
        response_text=response, response_tokens=np.arange(len(response) + 1, dtype=np.int32),
        finish_reason="stop", metadata={"answer": "3"})


async def test_a_weighted_name_and_import_path_score_alike_in_the_producers_workers(
        tmp_path: Path) -> None:
    # imported here: a reward worker imports this module for `per_char`, and should start fast
    from streamrl.hooks.run import ModelInitRequest
    from streamrl.log import open_log
    from streamrl.models import load_checkpoint
    from streamrl.producers.engine.engine import TorchEngine
    from streamrl.producers.worker import Producer
    from streamrl.recipe.config import load_recipe
    from streamrl.recipe.context import RunContext
    from tests.helpers import TINY
    from tests.run.tiny_task import init

    (tmp_path / "recipe.toml").write_text(TINY.read_text().replace(
        'reward = "tests.run.tiny_task:reward"', REWARD))
    config, hooks = load_recipe(tmp_path / "recipe.toml")
    with pytest.raises(RewardSandboxError, match="cannot be sent to a reward worker"):
        RewardSandbox(hooks.reward, timeout_s=1.0)  # the resolved function does not pickle
    ctx = RunContext(run_id="spec", config=config, init_checkpoint=tmp_path / "init",
                     run_dir=tmp_path, resolved_hooks=hooks)
    engine = TorchEngine(load_checkpoint(init(ModelInitRequest(out_dir=tmp_path / "init",
                                                               seed=0))),
                         config.rollout.engine)
    async with open_log("memory://") as log:
        producer = Producer(log, ctx, engine, 0, 1)  # builds its sandbox as a run does
        async with producer.rewards as rewards:
            for response in ("3", "4", "33 is it", ""):
                here, there = hooks.reward(sample(response)), await rewards.score(
                    sample(response))
                assert there == here, response
                assert there.status.startswith("exact: ")  # not an error, not a timeout
            right = await rewards.score(sample("3"))
            assert right.reward == 1.0 + 0.5 * 0.5
            assert right.token_rewards == (0.125, 0.125 + 1.0)


async def test_a_reward_spec_that_does_not_build_is_refused_at_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RewardSandboxError, match=r"cannot be built: rollout.reward: unknown "
                                                 r"reward 'maht'.*did you mean 'math'"):
        RewardSandbox(RewardRecipe(reward="maht"), timeout_s=1.0)
    # builds here (a module made in this process only), not in a worker: refused at start()
    phantom = types.ModuleType("phantom_rewards")
    phantom.reward = lambda s: RewardOutput(reward=1.0)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "phantom_rewards", phantom)
    rewards = RewardSandbox(RewardRecipe(reward="phantom_rewards:reward"), timeout_s=1.0)
    with pytest.raises(RewardSandboxError, match=r"cannot be loaded in a worker process: "
                                                 r".*phantom_rewards"):
        await rewards.start()
    await rewards.close()
