"""Handing a producer's prompts partitions over when the run's membership changes.

`streamrl scale` stops every producer of the old membership before the new one starts. A producer
told to hand over (SIGUSR1, or a Ray actor's `stop(hand_over=True)`) cancels the rollouts it has
not published and, in one transaction:
  - appends each of their prompts again to its partition, as a new prompt record (a new position,
    so a new group id), and
  - commits, per partition, the position after everything it started (or before the oldest prompt
    it read but had not started).
So the next owner generates every unfinished prompt exactly once and never regenerates a
published group: nothing lost, nothing duplicated. A producer that is killed instead hands over
nothing; its committed positions still lose nothing, and the trainer drops the duplicate groups
the next owner regenerates (their ids are the same).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from schemas import Prompt, encode_event
from schemas.ids import reissued_event_id
from streamrl.log import Append, Log, Record, StreamPartition
from streamrl.run.context import PRODUCER_GROUP, RunContext


async def hand_over(log: Log, ctx: RunContext, unfinished: Iterable[tuple[Record, Prompt]],
                    queued: Iterable[Record], next_offsets: dict[int, int]) -> int:
    """Requeue `unfinished` prompts and commit the handover positions; returns how many prompts
    were requeued. Call only once no rollout of this producer can publish any more."""
    prompts = ctx.streams.prompts
    appends = [
        Append(stream=prompts, partition=record.partition, key=prompt.prompt_id.encode(),
               value=encode_event(msgspec.structs.replace(
                   prompt, event_id=reissued_event_id(prompt.event_id, "h", record.partition,
                                                      record.offset))))
        for record, prompt in unfinished]
    queued = list(queued)
    positions = {
        StreamPartition(prompts, p): min((r.offset for r in queued if r.partition == p),
                                         default=next_offset)
        for p, next_offset in next_offsets.items()}
    await log.transact(PRODUCER_GROUP, positions, appends)
    return len(appends)
