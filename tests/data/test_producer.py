"""The real producer on dataset prompts: it generates from the rendered ids the driver published,
stops on every eos id of the checkpoint, and hands the reward the dataset's columns and the
rendered prompt text."""

from __future__ import annotations

from pathlib import Path

from streamrl.data import load_tokenizer
from streamrl.log import open_log
from streamrl.models import load_checkpoint
from streamrl.producers.engine.engine import TorchEngine
from streamrl.producers.worker import Producer
from streamrl.recipe.config import load_recipe
from streamrl.run.driver import start_run
from streamrl.schemas import decode_trajectories
from streamrl.schemas.ids import group_id_for
from tests.data.conftest import data_recipe
from tests.data.tiny_checkpoint import verl_rows, write_dataset
from tests.helpers import publish_partition


async def test_the_producer_generates_from_rendered_ids_and_rewards_see_the_row(
        checkpoint: Path, tmp_path: Path) -> None:
    train = write_dataset(tmp_path / "train.jsonl", verl_rows(2))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(data_recipe(checkpoint, train, data="shuffle = false").replace(
        "[rollout]\n", "[rollout]\nmax_producers = 1\n"))  # every prompt in partition 0
    config, hooks = load_recipe(recipe)
    tok = load_tokenizer(checkpoint)
    engine = TorchEngine(load_checkpoint(checkpoint), config.rollout.engine)
    async with open_log("memory://") as log:
        ctx, v0 = await start_run(config, log, "producer", tmp_path / "runs",
                                  recipe=str(recipe), hooks=hooks)
        v0.close()
        producer = Producer(log, ctx, engine, 0, 1)
        assert producer._params(group_id_for(0, 0), 0).stop_token_ids == tok.stop_token_ids
        assert len(tok.stop_token_ids) == 2
        await publish_partition(producer, log)
        rows = [row for r in await log.read_all(ctx.streams.trajectories)
                for row in decode_trajectories(r.value).to_pylist()]
    assert len(rows) == 2 * 4
    for row in rows:
        i = int(row["prompt_id"].rsplit("-", 1)[1])
        rendered = tok.render_chat([{"role": "user", "content": f"What is {i} + 3?"}])
        assert row["prompt_tokens"] == tok.encode(rendered).tolist()
        assert dict(row["reward_details"]) == {"has_ground_truth": 1.0, "has_data_source": 1.0,
                                               "has_prompt_text": 1.0}
