"""The W&B logger beside TensorBoard, offline: the run's id and recipe are the W&B run's, and
the scalars the monitor writes are in its history under the weight version."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from streamrl.recipe.config import load_config
from streamrl.recipe.context import RunContext
from streamrl.recipe.observability import LoggingSection, WandbConfig
from streamrl.run.loggers import open_writers
from tests.helpers import TINY
from tests.metrics.wandb_files import offline_run_file, read_offline_run


def test_wandb_offline_records_the_run_id_config_and_the_same_scalars(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = load_config(TINY)
    config = msgspec.structs.replace(config, logging=LoggingSection(
        wandb=WandbConfig(project="streamrl-tests")))
    ctx = RunContext(run_id="tiny-wandb", config=config, init_checkpoint=tmp_path / "init",
                     run_dir=tmp_path / "tiny-wandb")
    writers = open_writers(ctx)
    writers.add_scalar("train/reward_mean", 0.25, 1)
    writers.add_scalar("train/loss", -0.5, 1)
    writers.add_scalar("eval/mean@4", 0.125, 1)  # the eval of version 1 joins its row
    writers.add_scalar("train/reward_mean", 0.75, 2)
    writers.close()

    run = read_offline_run(offline_run_file(ctx.run_dir, "tiny-wandb"))
    assert run["run_id"] == "tiny-wandb" and run["project"] == "streamrl-tests"
    assert run["config"]["run"] == {"name": "tiny", "seed": 3, "max_versions": 3}
    assert run["config"]["trainer"]["batch_size"] == 8
    assert run["config"]["streamrl"]["run_id"] == "tiny-wandb"
    rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in run["history"]]
    assert rows == [{"version": 1, "train/reward_mean": 0.25, "train/loss": -0.5,
                     "eval/mean@4": 0.125},
                    {"version": 2, "train/reward_mean": 0.75}]
    assert any((ctx.run_dir / "tensorboard").iterdir())  # TensorBoard got them too
