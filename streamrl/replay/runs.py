"""Runs as replay sees them: an existing run's context (read-only), and a derived run — a
counterfactual re-training or a recorded replay — started in the same log under its own id.

A derived run has its own streams, weights and checkpoints, and a `RunStarted` that names its
parent (`RunParent(run_id, version=0, relation)`), so inspect, audit, staleness and compare read
it like any other run. Its version 0 is the parent's initial checkpoint.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import msgspec

from streamrl.checkpoints import checkpoint_dir
from streamrl.consumers.trainer.learner import Learner
from streamrl.log import Append, Log
from streamrl.models.checkpoint import read_safetensors
from streamrl.recipe.config import RunConfig
from streamrl.recipe.context import RunContext, load_run_context
from streamrl.recipe.hooks import Hooks
from streamrl.schemas import BatchFormed, CheckpointSaved, RunParent, TrainStep, encode_event
from streamrl.streams import RunStreams, check_run_id
from streamrl.weights import WeightTransport


class ReplayError(ValueError):
    """A replay that cannot run as asked; the message says what and where."""


async def existing_run(log: Log, run_id: str) -> RunContext:
    """The context of a run that must already exist; never creates a stream."""
    try:
        check_run_id(run_id)
    except ValueError as error:
        raise ReplayError(str(error)) from None
    if RunStreams(run_id).events not in await log.list_streams(run_id):
        raise ReplayError(f"run {run_id!r} does not exist in {log.url} (no {run_id}.events "
                          "stream); `streamrl inspect` lists what a log holds")
    return await load_run_context(log, run_id, timeout_s=5.0)


async def start_derived(log: Log, parent: RunContext, *, run_id: str, config: RunConfig,
                        relation: str, runs_dir: Path | None = None,
                        hooks: Hooks | None = None) -> tuple[RunContext, WeightTransport]:
    """Create run `run_id` derived from `parent`: its streams, `RunStarted` and version 0 (the
    parent's initial checkpoint, published on the new run's own transport, which the caller
    closes). Refuses an id that already exists. `hooks` are `config`'s, when already resolved."""
    try:
        check_run_id(run_id)
    except ValueError as error:
        raise ReplayError(f"--as {run_id!r}: {error}") from None
    if not parent.init_checkpoint.exists():
        raise ReplayError(f"run {parent.run_id!r}: its initial checkpoint "
                          f"{parent.init_checkpoint} no longer exists")
    streams = RunStreams(run_id)
    if streams.events in await log.list_streams(run_id):
        raise ReplayError(f"run {run_id!r} already exists in {log.url}; choose another --as")
    run_dir = (runs_dir or parent.run_dir.parent).absolute() / run_id
    ctx = RunContext(run_id=run_id, config=config, init_checkpoint=parent.init_checkpoint,
                     run_dir=run_dir, parent=RunParent(run_id=parent.run_id, version=0,
                                                       relation=relation),
                     resolved_hooks=hooks)
    # the run's own trajectories stream (empty: it reads its parent's) as its config says
    await log.ensure_stream(streams.trajectories, config.log.trajectory_partitions)
    for stream in (streams.prompts, streams.weights, streams.events, streams.dlq):
        await log.ensure_stream(stream, 1)
    await log.append(streams.events, encode_event(
        ctx.run_started(f"{relation} of {parent.run_id}")))
    transport = ctx.transport_config(keep_last=config.weights.keep_versions,
                                     namespace=run_id).open()
    tensors = await asyncio.to_thread(read_safetensors, ctx.init_checkpoint)
    published = await asyncio.to_thread(transport.publish, 0, tensors)
    await log.append(streams.weights, encode_event(published.announce(run_id=run_id,
                                                                       parent=None)))
    return ctx, transport


class Recorder:
    """Writes a replayed version into a derived run the way the trainer writes one: the batch
    (same positions, new run id), the step's metrics, the announcement, checkpoints on the
    recipe's schedule. For `streamrl replay --record`."""

    def __init__(self, log: Log, ctx: RunContext, transport: WeightTransport) -> None:
        self.log, self.ctx, self.transport = log, ctx, transport

    async def record(self, batch: BatchFormed, learner: Learner, metrics: dict[str, float],
                     ) -> None:
        version = batch.policy_version + 1
        published = await asyncio.to_thread(self.transport.publish, version,
                                            learner.hf_state_dict())
        streams = self.ctx.streams
        copy = msgspec.structs.replace(batch, run_id=self.ctx.run_id, event_id=uuid.uuid4().hex,
                                       time_ms=time.time_ns() // 1_000_000)
        step = TrainStep(run_id=self.ctx.run_id, step=version, version=version,
                         metrics=metrics | {"num_samples": float(len(batch.sample_ids))})
        announce = published.announce(run_id=self.ctx.run_id, parent=version - 1,
                                      batch_ids=(batch.batch_id,))
        await self.log.append_many([
            Append(stream=streams.events, value=encode_event(copy)),
            Append(stream=streams.events, value=encode_event(step)),
            Append(stream=streams.weights, value=encode_event(announce))])
        every = self.ctx.config.trainer.checkpoint_every
        if (every and version % every == 0) or version == self.ctx.config.run.max_versions:
            path = checkpoint_dir(self.ctx.run_dir, version)
            await asyncio.to_thread(learner.save, path)
            await self.log.append(streams.events, encode_event(CheckpointSaved(
                run_id=self.ctx.run_id, version=version, path=str(path),
                digest=published.digest)))
