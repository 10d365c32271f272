"""Rebuilding the trainer from the log: the newest checkpoint, then every recorded batch after it,
replayed in order, each resulting version checked against its announced digest.

This is event sourcing at work: the trainer's state at version N is a pure function of the
recorded batches, the config and the seed, so a restart continues bit-exactly where the committed
log ends, whatever happened to the process in between.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pyarrow as pa

from streamrl.consumers.trainer.backends import learner_class
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.log import Log
from streamrl.recipe.context import TRAINER_GROUP, RunContext
from streamrl.records import decode_trajectory_record
from streamrl.schemas import (
    BatchFormed,
    CheckpointSaved,
    Rejected,
    WeightVersionAnnounced,
    decode_event,
)
from streamrl.weights import weights_digest


class ResumeError(RuntimeError):
    """The recorded batches do not reproduce an announced version."""


class History(msgspec.Struct, kw_only=True):
    batches: list[BatchFormed]  # in log order; batch i trains version policy_version -> +1
    checkpoints: list[CheckpointSaved]
    rejected: set[str]  # subjects of committed Rejected events (sample ids, among others)
    announced: dict[int, WeightVersionAnnounced]

    @property
    def version(self) -> int:
        return max(self.announced, default=0)

    @property
    def trained(self) -> set[str]:
        return {sid for b in self.batches for sid in b.sample_ids}


async def read_history(log: Log, ctx: RunContext) -> History:
    events = [decode_event(r.value, "events")
              for r in await log.read_all(ctx.streams.events, 0)]
    announced = [decode_event(r.value, "weights")
                 for r in await log.read_all(ctx.streams.weights, 0)]
    return History(
        batches=[e for e in events if isinstance(e, BatchFormed)],
        checkpoints=[e for e in events if isinstance(e, CheckpointSaved)],
        rejected={e.subject for e in events if isinstance(e, Rejected)},
        announced={a.version: a for a in announced if isinstance(a, WeightVersionAnnounced)})


async def committed_offsets(log: Log, stream: str, num_partitions: int, *,
                            group: str = TRAINER_GROUP) -> dict[int, int]:
    """Where `group` resumes reading each partition of trajectories `stream` (0: never
    committed); the positions were committed together, in the transaction of the last batch."""
    return {p: await log.committed(group, stream, p) or 0 for p in range(num_partitions)}


async def batch_rows(log: Log, batch: BatchFormed) -> list[pa.RecordBatch]:
    """The exact rows a recorded batch trained on, in the order it trained on them."""
    wanted = set(batch.sample_ids)
    rows = []
    for position in dict.fromkeys(batch.positions):  # unique, in order
        [record] = await log.read(position.stream, position.partition, position.offset,
                                  max_records=1)
        data = decode_trajectory_record(record)
        keep = pa.array([sid in wanted for sid in data["sample_id"].to_pylist()])
        rows.append(data.filter(keep))
    return rows


class Replayed(msgspec.Struct, kw_only=True, frozen=True):
    """One recorded batch trained again: the version it produced and whether it matches."""

    batch: BatchFormed
    version: int
    digest: str  # weights_digest of the learner after the step
    expected: str  # the announced digest of `version`
    metrics: dict[str, float]

    @property
    def matches(self) -> bool:
        return self.digest == self.expected


def checkpoint_for(ctx: RunContext, history: History, until: int) -> tuple[int, Path]:
    """The newest checkpoint at or before `until` that still exists (else the run's initial
    one: version 0's, or a fork's starting state at its first version)."""
    start, path = ctx.first_version, ctx.init_checkpoint
    for ckpt in history.checkpoints:
        if start < ckpt.version <= until and Path(ckpt.path).exists():
            start, path = ckpt.version, Path(ckpt.path)
    return start, path


async def replay_batches(log: Log, learner: Learner, history: History, *, start: int,
                         until: int) -> AsyncIterator[Replayed]:
    """Train `learner` (at version `start`) on every recorded batch of versions start..until-1,
    in log order, yielding each resulting version with its digest and the announced one. The
    caller decides what a mismatch means (resume raises; replay reports)."""
    for batch in history.batches:
        if not start <= batch.policy_version < until:
            continue
        weights = list(batch.sample_weights) or [1.0] * len(batch.sample_ids)
        metrics = learner.step(await batch_rows(log, batch), weights, batch.policy_version)
        version = batch.policy_version + 1
        announced = history.announced.get(version)
        yield Replayed(batch=batch, version=version, metrics=metrics,
                       digest=weights_digest(learner.hf_state_dict()),
                       expected=announced.digest if announced else "")


async def rebuild(log: Log, ctx: RunContext, setup: LearnerSetup, history: History, *,
                  until: int | None = None,
                  on_version: Callable[[int], None] | None = None) -> Learner:
    """The learner at version `until` (default: the newest announced), from the newest checkpoint
    at or before it plus the recorded batches after it; raises ResumeError on a digest mismatch."""
    until = history.version if until is None else until
    start, path = checkpoint_for(ctx, history, until)
    learner = learner_class(setup).from_checkpoint(path, setup)
    async for step in replay_batches(log, learner, history, start=start, until=until):
        if not step.matches:
            raise ResumeError(f"replaying {step.batch.batch_id} did not reproduce version "
                              f"{step.version}: digest differs from the announced "
                              f"{step.expected[:16]}…")
        if on_version is not None:
            on_version(step.version)
    return learner
