"""A producer's share of the admission budget, rebuilt from the log when it (re)starts.

Admission control (`streamrl/staleness/policies.py`, `version_budget`) lets producer `rank` of
`num_producers` start the slots k < T with k % num_producers == rank, counting the samples it has
started so far. A producer that restarted after kill -9, or joined on `streamrl scale`, used to
count from zero: its whole share up to the trainer's current version looked free, it started that
many samples at once, and the trainer dropped most of them as stale (issue 21 measured 56% of all
samples dropped in a kill campaign). It counts instead as if the run's published samples had
filled the slots in order, its own being those with k % num_producers == rank:

    num_started = ceil((num_published - rank) / num_producers)

Summed over the ranks this is exactly the number published, so the shares still add up to the
budget (the trainer can fill every batch) and a restart re-admits only what was lost: the groups
the killed producer had in flight, which its successor generates again. Published samples are the
rows of the run's trajectories stream (a fork's carried groups included, which therefore count as
started first, as `ForkPoint.carried_share` says); groups the recipe's filter rejected never
reach it, as they leave `num_started` in a running producer.

Cost: one pass over the trajectories stream per start (the records' Arrow headers only); a run
of millions of groups would want the count checkpointed instead.
"""

from __future__ import annotations

import pyarrow as pa

from streamrl.log import Log


async def num_published_samples(log: Log, stream: str) -> int:
    """Samples in the trajectories `stream` (every partition); an undecodable record counts 0."""
    total = 0
    for partition in range(await log.num_partitions(stream)):
        total += await num_samples_from(log, stream, partition,
                                        await log.start_offset(stream, partition))
    return total


async def num_samples_from(log: Log, stream: str, partition: int, offset: int) -> int:
    """Samples in trajectories `stream`[`partition`] at and after `offset` (Arrow headers only);
    an undecodable record counts 0."""
    total = 0
    while page := await log.read(stream, partition, offset, max_records=1000):
        total += sum(_num_rows(record.value) for record in page)
        offset = page[-1].offset + 1
    return total


def started_share(num_published: int, rank: int, num_producers: int) -> int:
    """Producer `rank`'s part of `num_published` samples started in slot order."""
    return max(0, -(-(num_published - rank) // num_producers))


def _num_rows(value: bytes) -> int:
    try:
        return pa.ipc.open_stream(value).read_next_batch().num_rows
    except (pa.ArrowInvalid, StopIteration, OSError):
        return 0  # bytes no producer wrote: the trainer dead-letters them, nobody trains them
