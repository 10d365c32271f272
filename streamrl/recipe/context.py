"""What every process of a run knows: the run's config and files, read back from `RunStarted`.

The driver writes `RunStarted` once; producers, the trainer, replay and audit rebuild the same
`RunContext` from it, so the log alone is enough to join or reproduce a run.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import msgspec

from streamrl.log import Log
from streamrl.recipe.config import ConfigError, RunConfig, config_from_builtins
from streamrl.recipe.hooks import Hooks, resolve_hooks
from streamrl.schemas import RunParent, RunStarted, decode_event
from streamrl.streams import RunStreams
from streamrl.weights import TransportConfig

TRAINER_GROUP = "trainer"
PRODUCER_GROUP = "producers"


class ForkPoint(msgspec.Struct, kw_only=True, frozen=True):
    """Where a fork starts (streamrl/run/fork.py, fork_position.py): its first version is the
    parent's `version`; the parent's samples it took over are trained first, renamed."""

    version: int
    trajectories_offset: int  # the parent's trajectory records before it were judged at version
    # (partition 0's), and per partition of the parent's trajectories (empty: one partition)
    trajectories_offsets: tuple[int, ...] = ()
    carried: dict[str, str] = {}  # the fork's group id -> the parent's group id
    num_carried_samples: int = 0

    def carried_share(self, rank: int, num_producers: int) -> int:
        """Carried samples count as the first ones started (admission control): a producer's
        share of them, the slots k < num_carried_samples with k % num_producers == rank."""
        return max(0, -(-(self.num_carried_samples - rank) // num_producers))


class RunContext(msgspec.Struct, kw_only=True, frozen=True, dict=True):
    run_id: str
    config: RunConfig
    init_checkpoint: Path  # HF checkpoint of version 0
    run_dir: Path  # checkpoints, published weights, TensorBoard logs, plots
    parent: RunParent | None = None  # the run this one was forked or replayed from
    fork: ForkPoint | None = None  # set for a fork: where in the parent's log it starts
    resolved_hooks: Hooks | None = None  # `config`'s hooks, when this process already has them
    # sha256 digests of what the run started from, by name: "init_checkpoint" (weights_digest of
    # version 0), "data.train", "data.eval" (the dataset files' bytes)
    digests: dict[str, str] = {}

    @functools.cached_property
    def hooks(self) -> Hooks:
        """The recipe's hooks: those handed in (`load_recipe`'s), or resolved here on first use,
        so each process resolves a recipe once (streamrl/recipe/hooks.py)."""
        return self.resolved_hooks if self.resolved_hooks is not None else (
            resolve_hooks(self.config, lazy=True))

    @property
    def first_version(self) -> int:
        """The run's first announced weight version: 0, or a fork's parent version."""
        return self.fork.version if self.fork is not None else 0

    @property
    def streams(self) -> RunStreams:
        return RunStreams(self.run_id)

    def transport_config(self, *, keep_last: int, namespace: str) -> TransportConfig:
        """The run's weight transport: files under the run directory, or /dev/shm segments
        named after the run (so a later run can clean up after a crashed one)."""
        kind = self.config.weights.transport
        directory = str(self.run_dir / "weights") if kind == "file" else None
        w = self.config.weights
        cast = None if w.dtype == "float8_e4m3fn" else w.dtype  # fp8: quantized before it
        return TransportConfig(kind=kind, keep_last=keep_last, directory=directory,
                               namespace=namespace, slots=w.slots, dtype=cast)

    def run_started(self, recipe: str) -> RunStarted:
        return RunStarted(
            run_id=self.run_id, seed=self.config.run.seed, streamrl_version="0.1.0",
            recipe=recipe, parent=self.parent, config={
                "run_config": msgspec.to_builtins(self.config),
                "init_checkpoint": str(self.init_checkpoint),
                "run_dir": str(self.run_dir),
                "digests": dict(self.digests),
            } | ({"fork": msgspec.to_builtins(self.fork)} if self.fork is not None else {}))


def context_from_event(event: RunStarted) -> RunContext:
    config: dict[str, Any] = event.config if isinstance(event.config, dict) else {}
    if "run_config" not in config:
        raise ValueError(f"RunStarted of run {event.run_id!r} carries no run_config")
    return RunContext(run_id=event.run_id, config=config_from_builtins(config["run_config"]),
                      init_checkpoint=Path(config["init_checkpoint"]),
                      run_dir=Path(config["run_dir"]), parent=event.parent,
                      digests=dict(config.get("digests", {})),
                      fork=msgspec.convert(config["fork"], ForkPoint) if "fork" in config else None)


async def trajectory_partitions(log: Log, ctx: RunContext) -> int:
    """The run's trajectories partition count, as its recipe fixed it at creation
    (`log.trajectory_partitions`); a stream with another count (re-created, altered by an
    admin, imported over an existing topic) is refused, since the trainer's committed
    positions and recorded order name partitions of the count the run started with."""
    stream, expected = ctx.streams.trajectories, ctx.config.log.trajectory_partitions
    actual = await log.num_partitions(stream)
    if actual != expected:
        raise ConfigError(f"run {ctx.run_id!r}: {stream} has {actual} partitions in {log.url} "
                          f"but the run was created with log.trajectory_partitions = {expected}; "
                          f"a run's partition count is fixed at creation: restore the stream "
                          f"with {expected} partitions (streamrl export/import), or start a new "
                          f"run")
    return actual


async def load_run_context(log: Log, run_id: str, *, timeout_s: float = 30.0) -> RunContext:
    """The context of `run_id` from the first record of its events stream (waits for it)."""
    stream = RunStreams(run_id).events
    await log.ensure_stream(stream, 1)
    for record in await log.read(stream, 0, 0, max_records=16, timeout_s=timeout_s):
        event = decode_event(record.value, "events")
        if isinstance(event, RunStarted):
            return context_from_event(event)
    raise LookupError(f"run {run_id!r} has no RunStarted event in {log.url}")
