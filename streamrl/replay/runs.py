"""Runs as replay sees them: an existing run's context (read-only), and a derived run — a
counterfactual re-training or a recorded replay — started in the same log under its own id.

A derived run has its own streams, weights and checkpoints, and a `RunStarted` that names its
parent (`RunParent(run_id, version=0, relation)`), so inspect, audit, staleness and compare read
it like any other run. Its version 0 is the parent's initial checkpoint.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from schemas import RunParent, encode_event
from streamrl.log import Log
from streamrl.models.checkpoint import read_safetensors
from streamrl.run.config import RunConfig
from streamrl.run.context import RunContext, load_run_context
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
                        ) -> tuple[RunContext, WeightTransport]:
    """Create run `run_id` derived from `parent`: its streams, `RunStarted` and version 0 (the
    parent's initial checkpoint, published on the new run's own transport, which the caller
    closes). Refuses an id that already exists."""
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
                                                       relation=relation))
    for stream in (streams.prompts, streams.trajectories, streams.weights, streams.events,
                   streams.dlq):
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
