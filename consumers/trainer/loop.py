"""The trainer consumer: trajectories in, weight versions out, exactly once.

    while version < max_versions:
        batch = await next_batch()            # read, dead-letter, judge staleness, gather
        metrics = learner.step(batch)         # advantages, off-policy loss, optimizer
        await publish(batch, metrics)         # tensors copied to the transport; then, once
                                              # their digest is known, one transaction for
                                              # BatchFormed + TrainStep + Rejected + announce
                                              # + requeued prompts + the consumed position

With several trajectories partitions (`[log] trajectory_partitions`), `TrajectoryReader`
interleaves them (reader.py), `BatchFormed.positions` records the order the batch took, and the
one transaction commits every partition's position.

The transaction is the commit point: a crash before it loses nothing (the batch is formed again
from the same records after resume), a crash after it repeats nothing. The digest of a version
(a full pass over its bytes) is computed on the transport's thread while the next step already
trains, so the commit of version V may land during step V+1: at most one version is in flight,
and `settle()` waits for it before any later commit, a checkpoint event, or the end of `run`.

A counterfactual replay (`streamrl/replay/`) runs this same loop over another run's recorded
trajectories: a `TrajectorySource` names that stream, its own consumer group (never the parent's),
that it is finite (an empty read ends the loop with `SourceExhausted`) and the clock verdicts see.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from streamrl.checkpoints import checkpoint_dir
from streamrl.consumers.trainer.former import BatchFormer, FormedBatch, GroupJudge
from streamrl.consumers.trainer.hooks import TrainStepInput
from streamrl.consumers.trainer.learner import Learner
from streamrl.consumers.trainer.reader import TrajectoryReader
from streamrl.dlq import DeadLetters
from streamrl.log import Append, Log, Record, StreamPartition
from streamrl.models.quant import int4_payload, int4_scheme
from streamrl.recipe.context import TRAINER_GROUP, RunContext
from streamrl.records import decode_trajectory_record
from streamrl.schemas import (
    BatchFormed,
    CheckpointSaved,
    Event,
    LogPosition,
    TrainStep,
    decode_event,
    encode_event,
)
from streamrl.schemas.ids import parse_group_id, reissued_event_id
from streamrl.weights import WeightTransport, fp8
from streamrl.weights.base import PendingVersion, done_future
from streamrl.weights.inline import publish_version, tensor_bytes


def wall_clock(record: Record, version: int) -> int:
    """The live trainer judges a record at the moment it reads it."""
    return int(time.time() * 1000)


@dataclass(frozen=True, kw_only=True)
class TrajectorySource:
    """Where the loop reads trajectories (every partition) and under which group it commits."""

    stream: str
    group: str = TRAINER_GROUP
    finite: bool = False
    """A recorded stream that will not grow: the first empty read ends the loop."""
    clock: Callable[[Record, int], int] = wall_clock
    """`now_ms` for the staleness verdict of a record read at a trainer version."""


class SourceExhausted(Exception):
    """A finite source has no record left; the loop stopped before `max_versions`."""


class TrainerLoop:
    def __init__(self, log: Log, ctx: RunContext, learner: Learner, transport: WeightTransport,
                 *, version: int, trained: set[str], next_offsets: dict[int, int],
                 rejected: set[str] | None = None, source: TrajectorySource | None = None,
                 policy: GroupJudge | None = None) -> None:
        self.log, self.ctx, self.learner, self.transport = log, ctx, learner, transport
        self.version = version
        self.streams = ctx.streams
        self.source = source or TrajectorySource(stream=ctx.streams.trajectories)
        self.step_hooks = ctx.hooks.step_hooks
        self.former = BatchFormer(policy or ctx.hooks.staleness, ctx.config.trainer.batch_size,
                                  ctx.run_id, trained, next_offsets, rejected)
        self.dlq = DeadLetters(log, ctx.run_id, component="trainer")
        self.vocab_size = learner.model_config.vocab_size
        self.reader = TrajectoryReader(log, self.source.stream, finite=self.source.finite)
        self._commit: asyncio.Task[None] | None = None  # the version in flight
        self.on_commit: list[Callable[[TrainStep], None]] = []  # e.g. the metrics endpoint

    async def run(self) -> None:
        """Train until `max_versions`; raises SourceExhausted when a finite source ends first
        (its pending rejections are committed before)."""
        try:
            while self.version < self.ctx.config.run.max_versions:
                batch = await self.next_batch()
                metrics = await asyncio.to_thread(self.learner.step, batch.rows, batch.weights,
                                                  self.version)
                await self.publish(batch, metrics | self.hook_metrics(batch, metrics))
                await self.maybe_checkpoint()
        finally:
            await self.settle()

    def hook_metrics(self, batch: FormedBatch, metrics: dict[str, float]) -> dict[str, float]:
        step = TrainStepInput(
            version=self.version + 1, metrics=dict(metrics), sample_ids=tuple(batch.sample_ids),
            rewards=tuple(r for rows in batch.rows for r in rows["reward"].to_pylist()),
            lags=tuple(batch.lags), model=self.learner.model)
        extra: dict[str, float] = {}
        for hook in self.step_hooks:
            extra |= {name: float(value) for name, value in hook(step).items()}
        return extra

    async def next_batch(self) -> FormedBatch:
        while not self.former.ready:
            record = await self.reader.next(self.former.batch.next_offsets)
            if record is None:
                if self.former.has_decisions:
                    await self.commit_decisions()
                if self.source.finite:
                    raise SourceExhausted(f"{self.source.stream} ended at trainer version "
                                          f"{self.version}")
                continue
            decoded = await self.dlq.decode_or_reject(
                record, lambda _, r=record: decode_trajectory_record(r, vocab_size=self.vocab_size))
            self.former.add(record, decoded, self.version, self.source.clock(record, self.version))
        return self.former.take()

    async def publish(self, batch: FormedBatch, metrics: dict[str, float]) -> None:
        """Copy version+1 out to the transport, then commit it in the background once its digest
        is known (the caller's next step runs meanwhile)."""
        await self.settle()
        new = self.version + 1
        pending = await asyncio.to_thread(self.begin_publish, new)
        self.version = new
        self._commit = asyncio.create_task(self._commit_version(pending, batch, metrics))

    def begin_publish(self, version: int) -> PendingVersion:
        tensors = self.learner.hf_state_dict()
        inline = (self.ctx.config.weights.inline_max_bytes
                  if self.ctx.config.trainer.lora is not None else 0)
        if tensor_bytes(tensors) <= inline:  # rides in its announcement: nothing to overlap
            return PendingVersion(version, done_future(publish_version(
                self.transport, version, tensors, inline_max_bytes=inline)), 0.0)
        if self.ctx.config.weights.dtype == fp8.DTYPE:  # quantized here, on the trainer's device
            return fp8.begin_publish(self.transport, version, tensors)
        qat = self.ctx.config.trainer.qat
        if qat is not None and qat.int4 is not None and qat.int4.publish == "int4":
            spec = qat.int4.spec()  # the engine's int4 weights, packed here (models/quant.py)
            return fp8.begin_publish(self.transport, version, tensors, scheme=int4_scheme(spec),
                                     quantize=functools.partial(int4_payload, spec=spec))
        return self.transport.begin_publish(version, tensors)

    async def _commit_version(self, pending: PendingVersion, batch: FormedBatch,
                              metrics: dict[str, float]) -> None:
        published = await asyncio.to_thread(self.transport.finish_publish, pending)
        new = pending.version
        batch_id = f"batch-{new:06d}"
        metrics |= {"num_samples": float(len(batch.sample_ids)),
                    "num_rejected": float(len(batch.rejected)),
                    "staleness_mean": batch.staleness.mean,
                    "staleness_max": float(batch.staleness.max),
                    # the trainer's critical path, and the digest after it (off that path)
                    "weights_copy_ms": pending.copy_ms,
                    "weights_digest_ms": pending.digest_ms or 0.0}
        events: list[Event] = [
            BatchFormed(run_id=self.ctx.run_id, batch_id=batch_id,
                        positions=tuple(batch.positions), sample_ids=tuple(batch.sample_ids),
                        policy_version=new - 1, staleness=batch.staleness,
                        sample_weights=tuple(batch.weights),
                        consumed_to=self._positions(batch.next_offsets)),
            step := TrainStep(run_id=self.ctx.run_id, step=new, version=new, metrics=metrics),
            *batch.rejected,
        ]
        appends = [Append(stream=self.streams.events, value=encode_event(e)) for e in events]
        announce = published.announce(run_id=self.ctx.run_id, parent=new - 1,
                                      batch_ids=(batch_id,))
        appends.append(Append(stream=self.streams.weights, value=encode_event(announce)))
        appends += [await self._requeued(group_id) for group_id in batch.requeue]
        await self.log.transact(self.source.group, self._committed(batch.next_offsets), appends)
        self.last_digest = published.digest
        for observe in self.on_commit:
            observe(step)

    async def settle(self) -> None:
        """Wait until the version in flight is committed; raises what its commit raised."""
        if self._commit is not None:
            commit, self._commit = self._commit, None
            await commit

    async def commit_decisions(self) -> None:
        """Caught up without a full batch: commit the rejections and requeues judged so far."""
        await self.settle()
        rejected, requeue, offsets = self.former.take_decisions()
        appends = [Append(stream=self.streams.events, value=encode_event(e)) for e in rejected]
        appends += [await self._requeued(group_id) for group_id in requeue]
        await self.log.transact(self.source.group, self._committed(offsets), appends)

    def _committed(self, offsets: dict[int, int]) -> dict[StreamPartition, int]:
        """Every partition's position, committed in one transaction with what it decided."""
        return {StreamPartition(self.source.stream, p): offset
                for p, offset in sorted(offsets.items())}

    def _positions(self, offsets: dict[int, int]) -> tuple[LogPosition, ...]:
        return tuple(LogPosition(self.source.stream, p, offset)
                     for p, offset in sorted(offsets.items()))

    async def _requeued(self, group_id: str) -> Append:
        """The group's prompt again, as a new prompt event (group ids name the prompt record)."""
        partition, offset = parse_group_id(group_id)
        [record] = await self.log.read(self.streams.prompts, partition, offset, max_records=1)
        prompt = decode_event(record.value, "prompts")
        again = msgspec.structs.replace(
            prompt, event_id=reissued_event_id(prompt.event_id, "r", partition, offset))
        return Append(stream=self.streams.prompts, value=encode_event(again),
                      key=prompt.prompt_id.encode())

    async def maybe_checkpoint(self, *, force: bool = False) -> None:
        """Every `checkpoint_every` versions and at the last; `force` also elsewhere (a
        counterfactual whose recorded stream ended early keeps its final weights)."""
        every = self.ctx.config.trainer.checkpoint_every
        final = self.version == self.ctx.config.run.max_versions
        if not (force or final or (every and self.version % every == 0)):
            return
        path = checkpoint_dir(self.ctx.run_dir, self.version)
        await asyncio.to_thread(self.learner.save, path)
        await self.settle()  # its event names the version's digest
        await self.log.append(self.streams.events, encode_event(CheckpointSaved(
            run_id=self.ctx.run_id, version=self.version, path=str(path),
            digest=self.last_digest)))
