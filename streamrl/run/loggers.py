"""Where the run driver's scalars go: TensorBoard always, Weights & Biases when the recipe's
`[logging] wandb` asks for it. The monitor (streamrl/run/monitor.py) writes each scalar once to
`ScalarWriters`, which hands it to every logger, so every logger gets the same names and values.

    writers = open_writers(ctx)                 # runs/<run_id>/tensorboard (+ runs/<run_id>/wandb)
    writers.add_scalar("train/reward_mean", 0.5, version)
    writers.close()

The W&B run's id is the streamrl run id (a restarted driver continues it: `resume="allow"`), its
config is the recipe as recorded in `RunStarted` plus the run's lineage, and its x axis is the
weight version (the `version` key), not W&B's own step: an evaluation of version V may arrive
after the training step of V+1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import msgspec

from streamrl.recipe.context import RunContext
from streamrl.recipe.observability import WandbConfig


class ScalarWriter(Protocol):
    def add_scalar(self, tag: str, value: float, step: int) -> None: ...

    def close(self) -> None: ...


class WandbWriter:
    """One W&B run; the scalars of one version are buffered and logged as one row (W&B's
    history is a table, one row per `log` call)."""

    def __init__(self, settings: WandbConfig, run_id: str, run_dir: Path,
                 config: dict[str, Any]) -> None:
        import wandb  # heavy import, only when the recipe asks for W&B

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=settings.project, entity=settings.entity,
                              mode=settings.mode, id=run_id, name=run_id, dir=str(run_dir),
                              config=config, resume="allow",
                              settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("version")
        self.run.define_metric("*", step_metric="version")
        self._version: int | None = None
        self._row: dict[str, float] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if step != self._version:
            self.flush()
            self._version = step
        self._row[tag] = value

    def flush(self) -> None:
        if self._row:
            self.run.log({"version": self._version, **self._row})
            self._row = {}

    def close(self) -> None:
        """Finish the run; its files are complete when this returns (W&B 0.31's `finish` can
        return before its service wrote an offline run's log: the teardown waits for it)."""
        import wandb

        self.flush()
        self.run.finish()
        wandb.teardown()


class ScalarWriters:
    """Every logger of a run behind TensorBoard's `add_scalar(tag, value, step)`."""

    def __init__(self, writers: list[ScalarWriter]) -> None:
        self.writers = writers

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        for writer in self.writers:
            writer.add_scalar(tag, value, step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def open_writers(ctx: RunContext) -> ScalarWriters:
    """TensorBoard under `runs/<run_id>/tensorboard`, and W&B when `[logging] wandb` is set."""
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only when watching

    writers: list[ScalarWriter] = [SummaryWriter(log_dir=str(ctx.run_dir / "tensorboard"))]
    wandb = ctx.config.logging.wandb
    if wandb is not None:
        config = {**msgspec.to_builtins(ctx.config),
                  "streamrl": {"run_id": ctx.run_id, "first_version": ctx.first_version,
                               "parent": msgspec.to_builtins(ctx.parent)}}
        writers.append(WandbWriter(wandb, ctx.run_id, ctx.run_dir, config))
    return ScalarWriters(writers)
