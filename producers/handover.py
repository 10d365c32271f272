"""Handing a producer's prompts partitions over when the run's membership changes.

`streamrl scale` stops every producer of the old membership before the new one starts. A producer
told to hand over (SIGUSR1, or a Ray actor's `stop(hand_over=True)`) cancels the rollouts it has
not published and, in one transaction:
  - appends each of their prompts again to its partition, as a new prompt record (a new position,
    so a new group id), and
  - commits, per partition, the position after everything it started (or before the oldest prompt
    it read but had not started), with the finished prompts past it (the requeued ones among
    them) as the position's metadata (producers/resume.py).
So the next owner generates every unfinished prompt exactly once and never regenerates a
published group: nothing lost, nothing duplicated. A producer that is killed instead hands over
nothing: its last commit already names the prompts it finished past its position, so the next
owner regenerates only the unfinished ones, under their original group ids.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from streamrl.log import Append, Log, Record, StreamPartition
from streamrl.producers.resume import PartitionProgress
from streamrl.recipe.context import PRODUCER_GROUP, RunContext
from streamrl.schemas import Prompt, encode_event
from streamrl.schemas.ids import reissued_event_id


async def hand_over(log: Log, ctx: RunContext, unfinished: Iterable[tuple[Record, Prompt]],
                    queued: Iterable[Record], progress: dict[int, PartitionProgress]) -> int:
    """Requeue `unfinished` prompts (started, not committed) and commit the handover positions of
    every partition in `progress`; returns how many prompts were requeued. Call only once no
    rollout of this producer can publish any more."""
    prompts = ctx.streams.prompts
    unfinished = list(unfinished)
    appends = [
        Append(stream=prompts, partition=record.partition, key=prompt.prompt_id.encode(),
               value=encode_event(msgspec.structs.replace(
                   prompt, event_id=reissued_event_id(prompt.event_id, "h", record.partition,
                                                      record.offset))))
        for record, prompt in unfinished]
    queued = list(queued)
    positions = {
        StreamPartition(prompts, p): part.handed_over(
            requeued=[r.offset for r, _ in unfinished if r.partition == p],
            queued=[r.offset for r in queued if r.partition == p])
        for p, part in progress.items()}
    await log.transact(PRODUCER_GROUP, positions, appends)
    return len(appends)
