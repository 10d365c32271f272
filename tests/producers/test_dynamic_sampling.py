"""DAPO's dynamic sampling (`rollout.filter = "zero_variance"`) in the real producer: a group
whose rewards are all equal is not published but recorded as Rejected(zero_variance) in the
transaction that commits past its prompt; the other groups are published as usual."""

from __future__ import annotations

from pathlib import Path

from streamrl.hooks.rollout import FilterInput
from streamrl.hooks.run import ModelInitRequest
from streamrl.log import open_log
from streamrl.models import load_checkpoint
from streamrl.producers.engine.engine import TorchEngine
from streamrl.producers.filters import zero_variance
from streamrl.producers.worker import Producer
from streamrl.recipe.config import load_recipe
from streamrl.recipe.context import PRODUCER_GROUP, RunContext
from streamrl.schemas import Prompt, decode_event, decode_trajectories, encode_event
from tests.helpers import TINY, publish_partition
from tests.run.tiny_task import init


def test_the_filter_keeps_groups_whose_rewards_differ() -> None:
    def group(*rewards: float) -> FilterInput:
        n = len(rewards)
        return FilterInput(prompt_id="p", rewards=rewards, finish_reasons=("stop",) * n,
                           num_response_tokens=(3,) * n)
    assert zero_variance(group(0.0, 1.0, 1.0)).keep
    verdict = zero_variance(group(1.0, 1.0, 1.0, 1.0))
    assert not verdict.keep and verdict.code == "zero_variance"
    assert verdict.reason == "all 4 rewards are 1"


async def test_flat_groups_are_rejected_as_zero_variance(tmp_path: Path) -> None:
    text = TINY.read_text().replace(
        'reward = "tests.run.tiny_task:reward"',
        'reward = "tests.producers.filter_hooks:flat_or_varied"\n'
        'filter = "zero_variance"').replace("samples_per_prompt = 4", "samples_per_prompt = 2")
    (tmp_path / "recipe.toml").write_text(text)
    config, hooks = load_recipe(tmp_path / "recipe.toml")
    assert hooks.filter is zero_variance  # by name, through streamrl.recipe.filters
    ctx = RunContext(run_id="dapo", config=config, init_checkpoint=tmp_path / "init",
                     run_dir=tmp_path, resolved_hooks=hooks)
    engine = TorchEngine(load_checkpoint(init(ModelInitRequest(out_dir=tmp_path / "init",
                                                               seed=0))),
                         config.rollout.engine)
    async with open_log("memory://") as log:
        for stream in ctx.streams.all().values():
            await log.ensure_stream(stream, 1)
        for i, mode in enumerate(("flat", "varied")):
            await log.append(ctx.streams.prompts, encode_event(Prompt(
                run_id=ctx.run_id, prompt_id=f"q{i}", text="12=", metadata={"mode": mode})),
                partition=0)
        producer = Producer(log, ctx, engine, 0, 1)
        await publish_partition(producer, log)
        published = {decode_trajectories(r.value).to_pylist()[0]["prompt_id"]
                     for r in await log.read_all(ctx.streams.trajectories)}
        rejected = [e for r in await log.read_all(ctx.streams.events)
                    if type(e := decode_event(r.value, "events")).__name__ == "Rejected"]
        assert published == {"q1"}
        assert [(e.reason_code, e.detail) for e in rejected] == [
            ("zero_variance", "all 2 rewards are 1")]
        assert await log.committed(PRODUCER_GROUP, ctx.streams.prompts, 0) == 2
