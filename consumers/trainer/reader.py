"""`TrajectoryReader`: the records of every partition of a trajectories stream, one at a time, in
the order the trainer judges them.

Each partition is read in log order. Across partitions, the next record is the buffered head with
the smallest (log timestamp, partition, offset): an approximation of arrival order that is the
same whoever reads the same buffered records. Which records are buffered depends, on a live
stream, on what had arrived, so the order is not a function of the log alone: the trainer records
the order it used (`BatchFormed.positions`, one per sample, in training order), and replay, audit
and forks follow that record, never this reader. On a finite (recorded) stream every partition is
read before a head is chosen, so a counterfactual's order is a function of the log: a timestamp
merge of the partitions.

With one partition this is the plain log order, read in pages of `page` records.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from streamrl.log import Log, Record


class TrajectoryReader:
    def __init__(self, log: Log, stream: str, *, finite: bool, page: int = 64,
                 wait_s: float = 1.0, poll_s: float = 0.05) -> None:
        self.log, self.stream, self.finite = log, stream, finite
        self.page = page
        # A live read of an idle stream waits up to `wait_s` on one partition; with several,
        # every partition waits at once for 2 * `poll_s` (a read is never cancelled: a
        # cancelled Kafka fetch could drop records it had taken), and the caller asks again.
        self.wait_s = wait_s
        self.poll_s = poll_s  # an empty partition is polled at most this often meanwhile
        self._buffers: list[deque[Record]] = []
        self._ended: set[int] = set()  # finite: partitions read to their end
        self._polled: list[float] = []

    @property
    def num_partitions(self) -> int:
        return len(self._buffers)

    async def next(self, offsets: dict[int, int]) -> Record | None:
        """The next record to judge; None when nothing arrived within the wait (live: see
        `__init__`) or every partition is read to its end (finite). `offsets` is where each
        partition's unjudged records start (partition -> offset; absent is 0): an empty buffer
        is refilled from there, so a buffer never skips or repeats a record the caller has not
        judged."""
        if not self._buffers:
            n = await self.log.num_partitions(self.stream)
            self._buffers = [deque() for _ in range(n)]
            self._polled = [0.0] * n
        await self._refill(offsets, wait_s=0.0)
        if not any(self._buffers) and not self.finite:
            await self._refill(offsets, wait_s=self.wait_s if self.num_partitions == 1
                               else 2 * self.poll_s)
        heads = [b[0] for b in self._buffers if b]
        if not heads:
            return None
        first = min(heads, key=lambda r: (r.timestamp_ms, r.partition, r.offset))
        return self._buffers[first.partition].popleft()

    async def take(self, offsets: dict[int, int], limit: int | None = None) -> list[Record]:
        """The next `limit` records (all that are there, for None) in `next`'s order, `offsets`
        moved past each; fewer at the end of a finite stream or when a live one goes quiet."""
        records: list[Record] = []
        while (limit is None or len(records) < limit) and (
                record := await self.next(offsets)) is not None:
            records.append(record)
            offsets[record.partition] = record.offset + 1
        return records

    async def _refill(self, offsets: dict[int, int], *, wait_s: float) -> None:
        now = time.monotonic()
        idle = not any(self._buffers)
        due = [p for p, buffer in enumerate(self._buffers)
               if not buffer and p not in self._ended
               and (self.finite or idle or now - self._polled[p] >= self.poll_s)]
        pages = await asyncio.gather(*(  # partitions are read independently, at once
            self.log.read(self.stream, p, offsets.get(p, 0), max_records=self.page,
                          timeout_s=wait_s) for p in due))
        for p, page in zip(due, pages, strict=True):
            self._polled[p] = now
            self._buffers[p].extend(page)
            if not page and self.finite:
                self._ended.add(p)
