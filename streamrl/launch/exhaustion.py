"""Whether a run's prompts can make no further version: the supervisor ends such a run with
"prompts exhausted at version N" instead of leaving the trainer waiting forever.

A run is exhausted when both hold:
  - every prompts partition is finished: the producers' committed position has no prompt at or
    after it (a prompt in flight, unread, or requeued by the trainer or a handover keeps it
    open), and
  - the trajectories the trainer has not consumed (past its committed position) hold fewer
    samples than one batch, leaving out those it already rejected (a trainer caught up commits
    its position before the oldest sample it still holds for the next batch, so stale groups
    judged after that sample stay past it): no batch can be formed from them, and without
    prompts no more come.
The trainer commits its position with each batch and with the verdicts it reached while caught
up, so a batch in training still counts as unconsumed: a run is never ended under a step. The
supervisor also waits until the same state held `grace_s` apart (a verdict that requeues a
prompt lands a moment after the trainer read the samples it judged).
"""

from __future__ import annotations

from streamrl.log import Log
from streamrl.producers.budget import TrainerDrops, num_samples_from
from streamrl.recipe.context import PRODUCER_GROUP, TRAINER_GROUP, RunContext
from streamrl.schemas import TrainStep, decode_event


class PromptsExhausted(RuntimeError):
    """The run's prompts are used up before `max_versions`."""


async def exhausted_state(log: Log, ctx: RunContext) -> tuple[int, ...] | None:
    """A fingerprint of the log when the run looks exhausted (compare two, `grace_s` apart), or
    None while prompts or a batch's worth of samples remain."""
    prompts = ctx.streams.prompts
    ends = []
    for p in range(await log.num_partitions(prompts)):
        position = await log.committed(PRODUCER_GROUP, prompts, p) or 0
        if await log.read(prompts, p, position, max_records=1):
            return None
        ends.append(position)
    trajectories = ctx.streams.trajectories
    drops = TrainerDrops(log, ctx.streams.events)
    await drops.read()  # the samples the trainer rejected: never trained, wherever they are
    num_unconsumed = 0
    for p in range(await log.num_partitions(trajectories)):
        offset = await log.committed(TRAINER_GROUP, trajectories, p) or 0
        ends.append(offset)
        num_unconsumed += await num_samples_from(log, trajectories, p, offset,
                                                 excluding=drops.seen)
    if num_unconsumed >= ctx.config.trainer.batch_size:
        return None
    return (*ends, num_unconsumed)


async def latest_version(log: Log, ctx: RunContext) -> int:
    """The newest version the trainer made (the run's first version before any)."""
    version = ctx.first_version
    for record in await log.read_all(ctx.streams.events):
        if b"train_step" in record.value and isinstance(
                event := decode_event(record.value, "events"), TrainStep):
            version = max(version, event.version)
    return version
