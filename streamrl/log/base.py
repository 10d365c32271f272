"""The log interface every backend implements (memory, file, Kafka).

A log holds named *streams*; each stream has a fixed number of *partitions*; each partition is an
append-only sequence of records addressed by an integer *offset*. The guarantees every backend
gives, and that `tests/log/test_contract.py` checks against each one:

- `append` returns only once the record is durable under the backend's durability setting
  (file log: after fsync when `fsync="always"`; Kafka: acks=all). The returned `Position` is where
  the record now lives; reading from it returns that record first.
- Within a partition, offsets strictly increase in append order. They are contiguous on the memory
  and file backends; on Kafka transaction markers take offsets too, so consumers always resume at
  `last_record.offset + 1`, never by counting records.
- Readers only ever see committed data: a record written by `transact` becomes visible together
  with the rest of its transaction, or never.
- Consumer groups have durable committed positions: `commit` survives restarts and crashes;
  `committed` returns the next offset the group should read, or None if it never committed.
- `transact` appends a set of records and commits a group's positions as one atomic step: after a
  crash at any point either all of it happened or none of it did. This is what the trainer uses
  for exactly-once batch formation.
- A committed position may carry a metadata string (`Committed(offset, metadata)`, at most
  `MAX_METADATA_BYTES` of UTF-8, Kafka's default `offset.metadata.max.bytes`), stored and made
  visible atomically with its offset; `committed_with_metadata` reads both. Committing a plain
  int stores "" (Kafka's rule: every commit replaces the metadata). Producers record there the
  prompts they finished beyond their position (producers/resume.py).

Every method is a coroutine; backends are started with `start()` (or `async with`) and stopped
with `stop()`, which is idempotent. Cancelling a call may leave an append done or not done (as
with any network write), but never half done.
"""

from __future__ import annotations

import abc
import operator
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import NamedTuple, Self

import msgspec

Headers = tuple[tuple[str, bytes], ...]


class StreamPartition(NamedTuple):
    stream: str
    partition: int


class Position(NamedTuple):
    """Where a record lives: the log-wide address replay and audit point at."""

    stream: str
    partition: int
    offset: int


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """One record as read back from a log."""

    stream: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: Headers = ()
    timestamp_ms: int = 0

    @property
    def position(self) -> Position:
        return Position(self.stream, self.partition, self.offset)

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


MAX_METADATA_BYTES = 4096  # Kafka's default offset.metadata.max.bytes; every backend enforces it


class Committed(NamedTuple):
    """A consumer group's committed position in one partition."""

    offset: int  # the next offset to read
    metadata: str = ""  # stored with the offset by whoever committed it; "" when none


Offsets = Mapping[StreamPartition, int | Committed]


def committed_positions(group: str, offsets: Offsets) -> dict[StreamPartition, Committed]:
    """`offsets` as `Committed` values (a plain int carries metadata ""), checked the same way on
    every backend: a bad offset or an oversized metadata string is refused before anything is
    written, with where it was going."""
    out: dict[StreamPartition, Committed] = {}
    for sp, value in offsets.items():
        sp = StreamPartition(*sp)
        c = Committed(*value) if isinstance(value, tuple) else Committed(value)
        try:
            offset = operator.index(c.offset)
        except TypeError:
            offset = -1
        if offset < 0:
            raise ValueError(f"group {group!r}, {sp.stream}[{sp.partition}]: offset must be an "
                             f"int >= 0, got {c.offset!r}")
        if not isinstance(c.metadata, str):
            raise TypeError(f"group {group!r}, {sp.stream}[{sp.partition}]: metadata must be a "
                            f"str, got {type(c.metadata).__name__}")
        if (size := len(c.metadata.encode())) > MAX_METADATA_BYTES:
            raise ValueError(f"group {group!r}, {sp.stream}[{sp.partition}]: metadata is {size} "
                             f"bytes, more than the {MAX_METADATA_BYTES} a log may store")
        out[sp] = Committed(offset, c.metadata)
    return out


class Append(msgspec.Struct, frozen=True, kw_only=True):
    """One record to append; `partition=None` picks one from the key (see `choose_partition`)."""

    stream: str
    value: bytes
    key: bytes | None = None
    headers: Headers = ()
    partition: int | None = None
    # When the record was first written (ms since the epoch); None means now. Set only by tools
    # that copy a run's records (`streamrl import`), so arrival times survive the copy.
    timestamp_ms: int | None = None


class LogError(Exception):
    """Base of the log's errors. `retriable` tells a retry loop whether trying again can help."""

    retriable: bool = False


class StreamNotFoundError(LogError):
    pass


class LogClosedError(LogError):
    pass


class LogCorruptionError(LogError):
    """Stored bytes failed their checksum or framing in the middle of a log; nothing past them is
    delivered and nothing is truncated away."""


class LogWriteError(LogError):
    """A write or fsync failed; the records it covered were not acknowledged."""


class HistoryDeletedError(LogError):
    """A read asked for records the backend no longer holds (Kafka retention or `delete_records`
    removed them): offsets `first_missing`..`first_held - 1` of the partition are gone."""

    def __init__(self, stream: str, partition: int, first_missing: int, first_held: int) -> None:
        super().__init__(f"history deleted: {stream}[{partition}] no longer holds offsets "
                         f"{first_missing}..{first_held - 1} (its oldest record is at offset "
                         f"{first_held}); the run's topics had a finite retention, see "
                         "`streamrl inspect` and docs/fault-tolerance.md")
        self.stream, self.partition = stream, partition
        self.first_missing, self.first_held = first_missing, first_held


# A record with this header only holds its offset: readers never see it (the file log's stand-in
# for a Kafka transaction marker, written when a run copied from Kafka keeps its offsets).
MARKER_HEADER = "streamrl.marker"


def choose_partition(key: bytes | None, num_partitions: int) -> int:
    """The partition for a record appended without an explicit one: a stable hash of the key, so
    every backend puts the same key in the same partition; partition 0 without a key."""
    if key is None or num_partitions == 1:
        return 0
    return zlib.crc32(key) % num_partitions


class Log(abc.ABC):
    """An append-only, partitioned, durable log with consumer groups and atomic transactions."""

    url: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections and files. Idempotent."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Flush and release everything. Idempotent."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- streams --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def ensure_stream(self, stream: str, num_partitions: int = 1) -> int:
        """Create `stream` if it does not exist; return its actual number of partitions (an
        existing stream keeps the count it was created with)."""

    @abc.abstractmethod
    async def num_partitions(self, stream: str) -> int:
        """Raises StreamNotFoundError for an unknown stream."""

    @abc.abstractmethod
    async def list_streams(self, prefix: str = "") -> list[str]:
        """Names of the existing streams that start with `prefix`, sorted."""

    # -- writing --------------------------------------------------------------------------------
    async def append(
        self,
        stream: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> Position:
        """Append one record; returns once it is durable."""
        app = Append(stream=stream, value=value, key=key, headers=headers, partition=partition)
        return (await self.append_many([app]))[0]

    @abc.abstractmethod
    async def append_many(self, appends: Sequence[Append]) -> list[Position]:
        """Append several records with one durability wait; positions in the order given.
        Not atomic across records (use `transact` for that), but ordered within a partition."""

    @abc.abstractmethod
    async def transact(
        self, group: str, offsets: Offsets, appends: Sequence[Append]
    ) -> list[Position]:
        """Atomically append `appends` and set `group`'s committed positions to `offsets`
        (each the next offset to consume, optionally with metadata). All of it becomes visible
        and durable, or none."""

    # -- reading --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def read(
        self,
        stream: str,
        partition: int,
        offset: int,
        *,
        max_records: int = 1000,
        timeout_s: float = 0.0,
    ) -> list[Record]:
        """Committed records of one partition with offset >= `offset`, in order, at most
        `max_records`. Waits up to `timeout_s` for the first one when none is there yet."""

    @abc.abstractmethod
    async def end_offset(self, stream: str, partition: int) -> int:
        """The offset after the last committed record (0 for an empty partition)."""

    async def start_offset(self, stream: str, partition: int) -> int:
        """The offset of the oldest record still held: 0 unless the backend deletes history
        (Kafka with a finite retention); reading below it raises `HistoryDeletedError`."""
        await self.num_partitions(stream)  # StreamNotFoundError for an unknown stream
        return 0

    async def contiguous(self, stream: str) -> bool:
        """Whether `stream`'s offsets number its records 0, 1, 2, ... with no gap: True on the
        memory and file logs, False on Kafka (transaction markers take offsets) and for a file-log
        stream whose offsets were kept from Kafka by `streamrl import` (marker records)."""
        await self.num_partitions(stream)
        return True

    async def retention(self, stream: str) -> str:
        """How long the backend keeps `stream`'s records, in words ("forever" unless the backend
        deletes history)."""
        await self.num_partitions(stream)
        return "forever"

    async def read_all(self, stream: str, partition: int | None = None) -> list[Record]:
        """Every committed record of one partition (or of all partitions, partition by
        partition, when `partition` is None), read in pages; returns without waiting."""
        parts = range(await self.num_partitions(stream)) if partition is None else [partition]
        out: list[Record] = []
        for p in parts:
            offset = 0
            while page := await self.read(stream, p, offset, max_records=1000):
                out += page
                offset = page[-1].offset + 1
        return out

    async def follow(
        self, stream: str, partition: int, offset: int = 0, *, poll_s: float = 0.5
    ) -> AsyncIterator[Record]:
        """Every record from `offset` on, waiting for new ones forever (cancel to stop)."""
        while True:
            for record in await self.read(stream, partition, offset, timeout_s=poll_s):
                offset = record.offset + 1
                yield record

    # -- consumer groups ------------------------------------------------------------------------
    async def committed(self, group: str, stream: str, partition: int) -> int | None:
        """The next offset `group` should read from this partition, or None if never committed."""
        found = await self.committed_with_metadata(group, stream, partition)
        return None if found is None else found.offset

    @abc.abstractmethod
    async def committed_with_metadata(
        self, group: str, stream: str, partition: int
    ) -> Committed | None:
        """`group`'s committed position here with the metadata committed with it, or None if
        it never committed; both come from the same commit."""

    @abc.abstractmethod
    async def commit(self, group: str, offsets: Offsets) -> None:
        """Durably record `group`'s positions (each the next offset to consume, optionally with
        metadata); partitions not named keep theirs."""
