"""Faults injected into real runs, and what every faulty run must still satisfy afterwards.

`kill_trainer_once` is a training-step hook (named by import path in a recipe): hooks run after
the optimizer step and before the version is committed and checkpointed, so SIGKILL there kills
the trainer exactly between an optimizer step and its checkpoint.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from streamrl.audit import audit_run
from streamrl.hooks.train import TrainStepInput
from streamrl.log import Log
from streamrl.recipe.context import TRAINER_GROUP, RunContext
from streamrl.schemas import BatchFormed, Rejected, decode_event, decode_trajectories

KILL_AT_ENV = "STREAMRL_FAULT_KILL_AT"  # "VERSION:MARKER_FILE"


def kill_trainer_once(step: TrainStepInput) -> dict[str, float]:
    """SIGKILL this trainer at version VERSION, once (the marker file remembers it)."""
    version, marker = os.environ[KILL_AT_ENV].split(":", 1)
    if step.version == int(version) and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return {}


async def assert_exactly_once(log: Log, ctx: RunContext) -> list[BatchFormed]:
    """`streamrl audit` passes, and the samples trained are exactly those the committed trainer
    position covers (less those rejected with an event): none twice, none skipped."""
    report = await audit_run(log, ctx.run_id)
    assert report.ok, [f"{v.code} {v.where}: {v.message}" for v in report.violations]
    events = [decode_event(r.value, "events") for r in await log.read_all(ctx.streams.events)]
    batches = [e for e in events if isinstance(e, BatchFormed)]
    trained = [sid for b in batches for sid in b.sample_ids]
    assert len(trained) == len(set(trained)), "a sample was trained twice"
    rejected = {e.subject for e in events if isinstance(e, Rejected)}
    stream = ctx.streams.trajectories  # every partition (`[log] trajectory_partitions`)
    committed = [await log.committed(TRAINER_GROUP, stream, p) or 0
                 for p in range(await log.num_partitions(stream))]
    assert any(committed)
    covered = {sid for r in await log.read_all(stream) if r.offset < committed[r.partition]
               for sid in decode_trajectories(r.value)["sample_id"].to_pylist()}
    assert set(trained) <= covered, "trained a sample beyond the committed position"
    assert covered - set(trained) <= rejected, "a covered sample was neither trained nor rejected"
    assert len(batches) == ctx.config.run.max_versions
    return batches
