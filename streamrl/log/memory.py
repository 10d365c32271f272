"""In-process log for unit tests: the same guarantees as the other backends, nothing durable
beyond the process (a "restart" is a new `MemoryLog` sharing the same `MemoryStore`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import msgspec

from streamrl.log.base import (
    Append,
    Committed,
    Log,
    LogClosedError,
    Offsets,
    Position,
    Record,
    StreamNotFoundError,
    StreamPartition,
    choose_partition,
    committed_positions,
)


class MemoryStore(msgspec.Struct):
    """The state a `MemoryLog` keeps; share one between instances to simulate a restart."""

    partitions: dict[str, list[list[Record]]] = msgspec.field(default_factory=dict)
    groups: dict[str, dict[StreamPartition, Committed]] = msgspec.field(default_factory=dict)


class MemoryLog(Log):
    @classmethod
    def from_url(cls, url: str, **options: object) -> MemoryLog:
        """Options of other backends (writer_id, fsync, ...) mean nothing here."""
        return cls()

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.url = "memory://"
        self._store = store if store is not None else MemoryStore()
        self._changed = asyncio.Condition()
        self._closed = False

    async def stop(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError("memory log is stopped")

    def _partitions(self, stream: str) -> list[list[Record]]:
        try:
            return self._store.partitions[stream]
        except KeyError:
            raise StreamNotFoundError(f"stream {stream!r} does not exist") from None

    async def ensure_stream(self, stream: str, num_partitions: int = 1) -> int:
        self._check_open()
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        parts = self._store.partitions.setdefault(stream, [[] for _ in range(num_partitions)])
        return len(parts)

    async def num_partitions(self, stream: str) -> int:
        return len(self._partitions(stream))

    async def list_streams(self, prefix: str = "") -> list[str]:
        return sorted(s for s in self._store.partitions if s.startswith(prefix))

    def _append_now(self, appends: Sequence[Append]) -> list[Position]:
        # Resolve every target first so a bad stream name appends nothing.
        targets = []
        for app in appends:
            parts = self._partitions(app.stream)
            p = choose_partition(app.key, len(parts)) if app.partition is None else app.partition
            if not 0 <= p < len(parts):
                raise ValueError(f"partition {p} out of range for stream {app.stream!r}")
            targets.append((app, parts[p], p))
        now_ms = int(time.time() * 1000)
        positions = []
        for app, records, p in targets:
            offset = len(records)
            records.append(
                Record(
                    stream=app.stream,
                    partition=p,
                    offset=offset,
                    value=bytes(app.value),
                    key=app.key,
                    headers=tuple(app.headers),
                    timestamp_ms=now_ms if app.timestamp_ms is None else app.timestamp_ms,
                )
            )
            positions.append(Position(app.stream, p, offset))
        return positions

    async def append_many(self, appends: Sequence[Append]) -> list[Position]:
        self._check_open()
        positions = self._append_now(appends)
        async with self._changed:
            self._changed.notify_all()
        return positions

    async def transact(
        self, group: str, offsets: Offsets, appends: Sequence[Append]
    ) -> list[Position]:
        self._check_open()
        positions_of_group = committed_positions(group, offsets)
        for sp in positions_of_group:
            self._partitions(sp.stream)
        # No await between the two steps: nothing can observe one without the other.
        positions = self._append_now(appends)
        self._store.groups.setdefault(group, {}).update(positions_of_group)
        async with self._changed:
            self._changed.notify_all()
        return positions

    async def read(
        self,
        stream: str,
        partition: int,
        offset: int,
        *,
        max_records: int = 1000,
        timeout_s: float = 0.0,
    ) -> list[Record]:
        self._check_open()
        records = self._partitions(stream)[partition]
        if len(records) <= offset and timeout_s > 0:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: len(records) > offset), timeout_s
                    )
        return records[max(offset, 0) : max(offset, 0) + max_records]

    async def end_offset(self, stream: str, partition: int) -> int:
        return len(self._partitions(stream)[partition])

    async def committed_with_metadata(
        self, group: str, stream: str, partition: int
    ) -> Committed | None:
        return self._store.groups.get(group, {}).get(StreamPartition(stream, partition))

    async def commit(self, group: str, offsets: Offsets) -> None:
        self._check_open()
        self._store.groups.setdefault(group, {}).update(committed_positions(group, offsets))
