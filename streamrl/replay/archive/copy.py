"""Copy a stream from one log to another with every record at its original offset, so the
positions other records name (BatchFormed, group positions, ids made from prompt positions) stay
true in the copy.

Kafka's transaction markers take offsets that hold no record. On a file-log target each such
offset gets a marker record (`MARKER_HEADER`, never delivered to readers); on a Kafka target a run
of records followed by one missing offset is written as one transaction, whose commit marker
takes that offset again. A gap Kafka itself could not have made that way (records of an aborted
transaction) cannot be reproduced on Kafka and is refused before anything is written there.
Records keep their timestamps (the staleness audit and time-based policies read them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from streamrl.log import MARKER_HEADER, Append, HistoryDeletedError, Log, Record

Rewrite = Callable[[Record], bytes]
PAGE = 500
MARKER_WAIT_S = 30.0


class OffsetsNotKept(ValueError):
    """The target log cannot hold the stream's records at their offsets."""


async def copy_stream(src: Log, dst: Log, stream: str, *, rewrite: Rewrite | None = None,
                      on_records: Callable[[int], None] | None = None,
                      txn_group: str = "streamrl.import", to: str | None = None) -> list[int]:
    """Copy `stream` (every partition) from `src` into a new stream of `dst` (named `to`, by
    default the same); returns each partition's end offset. `rewrite` gives a record's new value
    (default: unchanged)."""
    to = to or stream
    num_partitions = await src.num_partitions(stream)
    if to in await dst.list_streams(to) and any(
            [await dst.end_offset(to, p) for p in range(await dst.num_partitions(to))]):
        raise ValueError(f"stream {to!r} already holds records in {dst.url}")
    await dst.ensure_stream(to, num_partitions)
    kafka = dst.url.startswith("kafka://")
    ends = []
    for p in range(num_partitions):
        if (first := await src.start_offset(stream, p)) > 0:
            raise HistoryDeletedError(stream, p, 0, first)
        end = await src.end_offset(stream, p)
        writer = _KafkaWriter(dst, to, p, txn_group) if kafka else _FileWriter(dst, to, p)
        offset = 0
        while page := await src.read(stream, p, offset, max_records=PAGE):
            for record in page:
                value = rewrite(record) if rewrite is not None else record.value
                await writer.put(record, value)
            offset = page[-1].offset + 1
            if on_records is not None:
                on_records(len(page))
        await writer.finish(end)
        ends.append(end)
    return ends


class _FileWriter:
    """Records, and marker records for the offsets between them."""

    def __init__(self, dst: Log, stream: str, partition: int) -> None:
        self.dst, self.stream, self.partition = dst, stream, partition
        self.next = 0
        self.pending: list[Append] = []

    async def put(self, record: Record, value: bytes) -> None:
        self._fill(record.offset, record.timestamp_ms)
        self.pending.append(Append(stream=self.stream, partition=self.partition, value=value,
                                   key=record.key, headers=record.headers,
                                   timestamp_ms=record.timestamp_ms))
        self.next += 1
        if len(self.pending) >= PAGE:
            await self._flush()

    async def finish(self, end: int) -> None:
        self._fill(end, self.pending[-1].timestamp_ms if self.pending else 0)
        await self._flush()

    def _fill(self, offset: int, timestamp_ms: int | None) -> None:
        while self.next < offset:
            self.pending.append(Append(stream=self.stream, partition=self.partition, value=b"",
                                       headers=((MARKER_HEADER, b""),),
                                       timestamp_ms=timestamp_ms))
            self.next += 1

    async def _flush(self) -> None:
        if self.pending:
            positions = await self.dst.append_many(self.pending)
            assert positions[-1].offset == self.next - 1, (positions[-1], self.next)
            self.pending = []


class _KafkaWriter:
    """Runs of records; a run followed by one missing offset is committed as a transaction."""

    def __init__(self, dst: Log, stream: str, partition: int, group: str) -> None:
        self.dst, self.stream, self.partition, self.group = dst, stream, partition, group
        self.next = 0
        self.run: list[Append] = []

    async def put(self, record: Record, value: bytes) -> None:
        await self._close_run(record.offset)
        self.run.append(Append(stream=self.stream, partition=self.partition, value=value,
                               key=record.key, headers=record.headers,
                               timestamp_ms=record.timestamp_ms))
        self.next += 1
        if len(self.run) > PAGE:  # keep the last record: a transaction may have to carry it
            await self.dst.append_many(self.run[:-1])
            self.run = self.run[-1:]

    async def finish(self, end: int) -> None:
        await self._close_run(end)
        if self.run:
            await self.dst.append_many(self.run)
            self.run = []

    async def _close_run(self, offset: int) -> None:
        gap = offset - self.next
        if gap == 0:
            return
        if gap != 1 or not self.run:
            raise OffsetsNotKept(
                f"{self.stream}[{self.partition}]: offsets {self.next}..{offset - 1} hold no "
                "record (an aborted transaction's); Kafka cannot leave such a gap on purpose, so "
                "this stream can only be imported to the file log")
        positions = await self.dst.transact(self.group, {}, self.run)
        if positions[-1].offset != self.next - 1:
            raise OffsetsNotKept(f"{self.stream}[{self.partition}]: record written at offset "
                                 f"{positions[-1].offset}, expected {self.next - 1}")
        self.run = []
        self.next = offset
        await marker_written(self.dst, self.stream, self.partition, offset)


async def marker_written(log: Log, stream: str, partition: int, end: int) -> None:
    """Wait until a committed transaction's marker holds its offset (`end` - 1). Kafka writes
    commit markers after the commit returns, so a record appended at once could take the
    marker's offset and shift every later one."""
    deadline = time.monotonic() + MARKER_WAIT_S
    while (now := await log.end_offset(stream, partition)) < end:
        if time.monotonic() >= deadline:
            raise OffsetsNotKept(f"{stream}[{partition}]: the transaction's commit marker did not "
                                 f"reach offset {end - 1} within {MARKER_WAIT_S:.0f} s "
                                 f"(end offset {now})")
        await asyncio.sleep(0.01)
