"""A run started from `[model] path` and `[data] train`: the log records the rendered prompt ids,
the dataset's columns and rendered text as metadata, and the digests of the checkpoint and the
dataset in RunStarted; `streamrl run` then trains on it end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from streamrl import aio
from streamrl.data import load_tokenizer
from streamrl.hooks.run import PROMPT_TEXT
from streamrl.log import open_log
from streamrl.models.checkpoint import read_safetensors
from streamrl.recipe.config import load_recipe
from streamrl.recipe.context import context_from_event, load_run_context
from streamrl.run.driver import start_run
from streamrl.schemas import (
    Prompt,
    RunStarted,
    WeightVersionAnnounced,
    decode_event,
    decode_trajectories,
)
from streamrl.weights import weights_digest
from tests.data.conftest import data_recipe
from tests.data.tiny_checkpoint import verl_rows, write_dataset
from tests.helpers import streamrl


def test_the_log_records_rendered_ids_metadata_and_digests(checkpoint: Path,
                                                           tmp_path: Path) -> None:
    train = write_dataset(tmp_path / "train.parquet", verl_rows(5))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(data_recipe(checkpoint, train, data='epochs = 2\nsystem_prompt = "Add."'))
    config, hooks = load_recipe(recipe)
    tok = load_tokenizer(checkpoint)

    async def start() -> None:
        async with open_log("memory://") as log:
            ctx, v0 = await start_run(config, log, "data-run", tmp_path / "runs",
                                      recipe=str(recipe), hooks=hooks)
            v0.close()
            [started] = [decode_event(r.value, "events")
                         for r in await log.read_all(ctx.streams.events)]
            assert isinstance(started, RunStarted)
            digests = context_from_event(started).digests
            assert digests["data.train"] == hashlib.sha256(train.read_bytes()).hexdigest()
            assert digests["init_checkpoint"] == weights_digest(read_safetensors(checkpoint))
            [announced] = [decode_event(r.value, "weights")
                           for r in await log.read_all(ctx.streams.weights)]
            assert isinstance(announced, WeightVersionAnnounced)
            assert announced.digest == digests["init_checkpoint"]
            assert ctx.init_checkpoint == checkpoint  # used in place, not copied
            prompts = [decode_event(r.value, "prompts")
                       for r in await log.read_all(ctx.streams.prompts)]
            assert len(prompts) == 10 and all(isinstance(p, Prompt) for p in prompts)
            for p in prompts:
                assert p.text is None and p.num_samples == 4
                i = p.metadata["extra_info"]["index"]
                text = tok.render_chat([{"role": "system", "content": "Add."},
                                        {"role": "user", "content": f"What is {i} + 3?"}])
                assert p.metadata[PROMPT_TEXT] == text
                assert p.tokens == tuple(tok.encode(text).tolist())
                assert p.metadata["ground_truth"] == str(i + 3)
                assert p.metadata["data_source"] == "tiny_add"
            rows = sorted(p.metadata["extra_info"]["index"] for p in prompts)
            assert rows == sorted(list(range(5)) * 2)  # two epochs, every row in each

    aio.run(start())


@pytest.mark.slow
def test_streamrl_run_trains_from_a_checkpoint_and_a_dataset(checkpoint: Path,
                                                             tmp_path: Path) -> None:
    train = write_dataset(tmp_path / "train_saved", verl_rows(8))  # a save_to_disk directory
    evals = write_dataset(tmp_path / "eval.jsonl", verl_rows(2))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(data_recipe(checkpoint, train, data=f'epochs = 4\neval = "{evals}"')
                      + "\n[eval]\nevery_versions = 2\nsamples = 2\n")
    log_url = str(tmp_path / "log")
    out = streamrl("run", str(recipe), "--log", log_url, "--run", "from-ckpt", "--runs-dir",
                   str(tmp_path / "runs"), OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    assert "versions trained" in out.stdout
    assert "eval at version 0" in out.stdout  # periodic evaluation (tests/data/test_periodic_eval)
    summary = json.loads((tmp_path / "runs" / "from-ckpt" / "summary.json").read_text())
    assert summary["periodic_evals"][0]["version"] == 0

    async def check() -> None:
        async with open_log(log_url) as log:
            ctx = await load_run_context(log, "from-ckpt")
            assert ctx.config.model.path == str(checkpoint)
            records = await log.read_all(ctx.streams.trajectories)
            details = [d for r in records
                       for d in decode_trajectories(r.value)["reward_details"].to_pylist()]
            assert len(details) >= 16
            # the dataset's columns and the rendered prompt reached every reward call
            assert all(dict(d) == {"has_ground_truth": 1.0, "has_data_source": 1.0,
                                   "has_prompt_text": 1.0} for d in details), details[:2]

    aio.run(check())
