"""A producer's count against the admission budget: rebuilt from the log when it (re)starts, and
credited while it runs for the samples the trainer did not train.

Admission control (`streamrl/staleness/policies.py`, `version_budget`) lets producer `rank` of
`num_producers` start the slots k < T with k % num_producers == rank, T = (trainer_version +
max_staleness + 1) * batch_size. What fills a slot is a sample that is, or may still be, trained:
started and not yet judged, or trained. A sample the trainer judged and did not train (a
`Rejected` event naming its sample id: stale_lag, group_rejected, duplicate, a requeued group, any
reason a policy gives) frees its slot, and so does a group the recipe's filter rejected (never
published). The trainer consumes batch_size trained samples per version, so without the credit
every drop would be a slot lost for good: after about max_staleness * batch_size drops the
producers would hold the whole budget in samples nobody trains, and the run would stall.

Why credit the trainer's drops rather than count trained samples plus those in flight: a
producer cannot see which of the samples it published are still waiting to be judged without
reading the trajectories stream and every batch; the Rejected events are one stream it can
follow, and its own prompts partitions tell it which drops are its own (sample ids name the
prompt record, `streamrl.schemas.ids`). Each drop is credited to the producer that owns the
sample's prompts partition now (p % num_producers == rank), whoever generated it, so every drop
is credited exactly once over a membership and the counts still sum to the samples started and
not rejected.

Rebuilt on a (re)start, in the same units: the run's published samples minus the distinct sample
ids the trainer rejected so far, as if those had filled the slots in order, producer `rank` owning
those with k % num_producers == rank:

    num_started = ceil((num_published - num_dropped - rank) / num_producers)

Summed over the ranks this is exactly the number published and not rejected (trained, or still to
be judged), so the shares still add up to the budget (the trainer can fill every batch), and a
restart re-admits only what was lost: the groups the killed producer had in flight. The events
stream's end is read before the trajectories are counted, so every drop counted names a sample
that is counted; drops after that point are credited live (`TrainerDrops`). Without the
rebuild, a producer restarted after kill -9 counted from zero (issue 21: 56% of all samples
dropped in a kill campaign).

Cost: one pass over the trajectories stream (the records' Arrow headers only) and one over the
events stream per start; a run of millions of groups would want the counts checkpointed instead.
Not credited: a record the trainer dead-letters (a digest mismatch) is counted as published but
never named by a Rejected event.
"""

from __future__ import annotations

from collections.abc import Collection

import pyarrow as pa

from streamrl.log import Log
from streamrl.schemas import Rejected, decode_event
from streamrl.schemas.ids import parse_group_id

TAG = b"rejected"  # the Rejected event's msgpack tag: records without it are not decoded


async def num_published_samples(log: Log, stream: str) -> int:
    """Samples in the trajectories `stream` (every partition); an undecodable record counts 0."""
    total = 0
    for partition in range(await log.num_partitions(stream)):
        total += await num_samples_from(log, stream, partition,
                                        await log.start_offset(stream, partition))
    return total


async def num_samples_from(log: Log, stream: str, partition: int, offset: int, *,
                           excluding: Collection[str] = ()) -> int:
    """Samples in trajectories `stream`[`partition`] at and after `offset` (Arrow headers only,
    unless sample ids in `excluding` are left out); an undecodable record counts 0."""
    total = 0
    while page := await log.read(stream, partition, offset, max_records=1000):
        total += sum(_num_rows(record.value, excluding) for record in page)
        offset = page[-1].offset + 1
    return total


def started_share(num_published: int, rank: int, num_producers: int) -> int:
    """Producer `rank`'s part of `num_published` samples started in slot order."""
    return max(0, -(-(num_published - rank) // num_producers))


def dropped_partition(value: bytes) -> tuple[str, int] | None:
    """(sample id, prompts partition) when the events record `value` is the trainer's Rejected
    for one sample; None for any other event (a producer's throttle names the producer, a
    filtered group names the group, not a sample)."""
    if TAG not in value:
        return None
    event = decode_event(value, "events")
    if not isinstance(event, Rejected):
        return None
    group, sep, index = event.subject.rpartition("-s")
    if not sep or not index.isdigit():
        return None
    try:
        return event.subject, parse_group_id(group)[0]
    except ValueError:
        return None


class TrainerDrops:
    """The trainer's Rejected samples on the events stream, followed from an offset: each sample
    id once (a trainer restarted mid-batch may judge a group again)."""

    def __init__(self, log: Log, stream: str, offset: int = 0) -> None:
        self.log, self.stream, self.offset = log, stream, offset
        self.seen: set[str] = set()

    async def read(self, owned: Collection[int] | None = None, *, to: int | None = None) -> int:
        """New drops up to offset `to` (default: the end), counting only those whose prompts
        partition is in `owned` (None: all)."""
        count = 0
        while to is None or self.offset < to:
            limit = 1000 if to is None else min(1000, to - self.offset)
            page = await self.log.read(self.stream, 0, self.offset, max_records=limit)
            if not page:
                break
            for record in page:
                drop = dropped_partition(record.value)
                if drop is not None and drop[0] not in self.seen:
                    self.seen.add(drop[0])
                    count += owned is None or drop[1] in owned
            self.offset = page[-1].offset + 1
        return count


async def admission_count(log: Log, trajectories: str, events: str, rank: int,
                          num_producers: int) -> tuple[int, TrainerDrops]:
    """Producer `rank`'s count against the budget at its start (see the module docstring), and
    the follower that credits later drops from where the count stopped."""
    drops = TrainerDrops(log, events)
    end = await log.end_offset(events, 0)  # before the trajectories: every drop names a sample
    num_published = await num_published_samples(log, trajectories)
    num_dropped = await drops.read(to=end)
    return started_share(num_published - num_dropped, rank, num_producers), drops


def _num_rows(value: bytes, excluding: Collection[str] = ()) -> int:
    try:
        batch = pa.ipc.open_stream(value).read_next_batch()
        if not excluding:
            return batch.num_rows
        return sum(sid not in excluding for sid in batch.column("sample_id").to_pylist())
    except (pa.ArrowInvalid, StopIteration, OSError, KeyError):
        return 0  # bytes no producer wrote: the trainer dead-letters them, nobody trains them
