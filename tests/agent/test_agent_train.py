"""A tool-using agent, written with the `openai` client, as a recipe's rollout function: the real
producer serves its two-turn conversations from the engine, publishes each as one trajectory on
the file log, and the real trainer takes one step on them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from recipes.agent_tools.agent import reward
from streamrl.consumers.trainer.__main__ import train
from streamrl.data import load_tokenizer
from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.log import open_log
from streamrl.models import load_checkpoint
from streamrl.producers.engine import TorchEngine
from streamrl.producers.worker import Producer
from streamrl.recipe.config import load_recipe
from streamrl.run.driver import start_run
from streamrl.schemas import EvalResult, decode_event, decode_trajectories
from tests.agent.scripted import CALL, ScriptedEngine
from tests.helpers import REPO, publish_partition


async def evaluate(producer: Producer) -> EvalResult:
    """Producer 0's periodic evaluation of version 0: the agent's eval samples are sessions of
    the same endpoint (scored in-process here: the reward workers start with the rollouts)."""
    async def score(inp: RewardInput) -> RewardOutput:
        return reward(inp)

    evaluation = producer.evaluation
    assert evaluation is not None
    evaluation.score = score
    task = asyncio.create_task(evaluation.run(0))
    while not task.done():
        if producer.client.has_work():
            await producer.client.step()
        else:
            await asyncio.sleep(0.005)
    return task.result()


RECIPE = '''[run]
name = "agent"
seed = 5
max_versions = 1

[model]
path = "{checkpoint}"

[data]
train = "{train}"
eval = "{train}"
samples_per_prompt = 2

[rollout]
rollout = "recipes.agent_tools.agent:rollout"
reward = "recipes.agent_tools.agent:reward"
max_producers = 1
max_new_tokens = 4
engine = {{ max_batch_size = 4, max_seq_len = 512 }}

[trainer]
batch_size = 2
lr = 1e-3

[eval]
every_versions = 1
samples = 2
'''


async def test_the_trainer_steps_on_a_two_turn_tool_trajectory(
        tool_checkpoint: Path, tmp_path: Path) -> None:
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(json.dumps(
        {"prompt": "What is 17 + 25?", "question": "What is 17 + 25?", "answer": "42"}) + "\n")
    recipe = tmp_path / "agent.toml"
    recipe.write_text(RECIPE.format(checkpoint=tool_checkpoint, train=train_file))
    config, hooks = load_recipe(recipe)
    tok = load_tokenizer(tool_checkpoint)
    engine = ScriptedEngine(TorchEngine(load_checkpoint(tool_checkpoint), config.rollout.engine),
                            tok, CALL)
    url = str(tmp_path / "log")
    async with open_log(url) as log:
        ctx, v0 = await start_run(config, log, "agent", tmp_path / "runs", recipe=str(recipe),
                                  hooks=hooks)
        try:
            producer = Producer(log, ctx, engine, 0, 1)
            evaluation = await evaluate(producer)
            await publish_partition(producer, log)
            rows = [row for r in await log.read_all(ctx.streams.trajectories)
                    for row in decode_trajectories(r.value).to_pylist()]
            await train(url, ctx.run_id)
            events = [decode_event(r.value, "events")
                      for r in await log.read_all(ctx.streams.events)]
        finally:
            v0.close()
    assert engine.num_scripted == 2 + 2  # each sample's first call, evaluated ones included
    assert (evaluation.num_samples, evaluation.num_reward_failures) == (2, 0)

    call = [*tok.encode(CALL).tolist(), tok.stop_token_id]
    context = tok.encode("\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n").tolist()
    assert len(rows) == 2
    for row in rows:
        response, mask = row["response_tokens"], row["loss_mask"]
        assert response[:len(call) + len(context)] == call + context  # stitched in order
        answer = len(response) - len(call) - len(context)
        assert 1 <= answer <= 4  # the second turn, sampled by the real engine
        assert mask == [True] * len(call) + [False] * len(context) + [True] * answer
        assert all(lp == 0 for lp, m in zip(row["logprobs"], mask, strict=True) if not m)
        assert row["response_versions"] == [0] * len(response)
        assert dict(row["reward_details"])["agent_calls"] == 2.0
        prompt = tok.decode(row["prompt_tokens"])  # the agent's own messages, with its tools
        assert prompt.startswith("system\nSolve the problem.") and "calculator" in prompt
        assert prompt.endswith("user\nWhat is 17 + 25?\nassistant\n")

    [step] = [e for e in events if type(e).__name__ == "TrainStep"]
    [batch] = [e for e in events if type(e).__name__ == "BatchFormed"]
    assert sorted(batch.sample_ids) == sorted(row["sample_id"] for row in rows)
    # The trainer scores exactly the model's tokens, and its logprobs of them, recomputed over
    # the stitched sequences, are the engine's: every importance weight is 1.
    assert step.version == 1
    assert step.metrics["num_tokens"] == sum(sum(row["loss_mask"]) for row in rows)
    assert np.isclose(step.metrics["tis_weight_mean"], 1.0, atol=1e-4)
    assert abs(step.metrics["approx_kl_old"]) < 1e-6


def test_the_example_recipe_loads(tool_checkpoint: Path, tmp_path: Path) -> None:
    """recipes/agent_tools/recipe.toml with the tiny checkpoint in place of the model."""
    from recipes.agent_tools import data

    text = (REPO / "recipes/agent_tools/recipe.toml").read_text()
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in data.rows(4)))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text.replace("models/Qwen2.5-0.5B-Instruct", str(tool_checkpoint))
                      .replace("runs/agent_tools/train.jsonl", str(train_file)))
    config, hooks = load_recipe(recipe)
    assert config.rollout.rollout == "recipes.agent_tools.agent:rollout"
    assert hooks.rollout.__name__ == "rollout"
