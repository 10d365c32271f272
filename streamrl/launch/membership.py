"""Which producer owns which prompts partitions, and the newest scale request of a run.

The assignment is a pure function of (index, number of producers, number of partitions), so any
process, replay or audit computes the same owner for a prompt. The prompts stream has
`rollout.max_producers` partitions, so every member of up to that many producers owns at least
one partition.
"""

from __future__ import annotations

import re

from streamrl.log import Log
from streamrl.schemas import ProducerJoined, ScaleRequested, decode_event


def owned_partitions(index: int, num_producers: int, num_partitions: int) -> list[int]:
    """Partitions p with p % num_producers == index: round robin, so members differ by at most one
    partition and the prompts (published round robin over partitions) stay in order."""
    if not 0 <= index < num_producers:
        raise ValueError(f"producer index {index} is not in [0, {num_producers})")
    if num_producers > num_partitions:
        raise ValueError(f"{num_producers} producers but the prompts stream has only "
                         f"{num_partitions} partitions: raise rollout.max_producers")
    return [p for p in range(num_partitions) if p % num_producers == index]


class EventFollower:
    """Follows a run's events stream for what the supervisor acts on: `poll` returns the newest
    `ScaleRequested` since the last call (older ones it supersedes are skipped), and keeps
    `joined`, the pids of producers that have written `ProducerJoined` (they are working)."""

    def __init__(self, log: Log, events_stream: str, *, offset: int = 0) -> None:
        self.log, self.stream, self.offset = log, events_stream, offset
        self.joined: set[int] = set()

    async def poll(self, timeout_s: float = 0.0) -> ScaleRequested | None:
        newest = None
        while True:
            records = await self.log.read(self.stream, 0, self.offset, max_records=512,
                                          timeout_s=timeout_s)
            if not records:
                return newest
            self.offset = records[-1].offset + 1
            for record in records:
                if not _CANDIDATE.search(record.value):  # cheap skip; decode only candidates
                    continue
                match decode_event(record.value, "events"):
                    case ScaleRequested() as event:
                        newest = event
                    case ProducerJoined(pid=pid):
                        self.joined.add(pid)
            timeout_s = 0.0


_CANDIDATE = re.compile(rb"scale_requested|producer_joined")
