"""The embedded default log: append-only segment files on local disk (`file://DIR` or a path).

    <root>/<stream>/stream.json                    {"version": 1, "num_partitions": N}, made once
    <root>/<stream>/<partition>/<base>.seg          segments named by base offset (segments.py)
    <root>/<stream>/<partition>/.lock              writers' flock (writer.py)
    <root>/<stream>/<partition>/torn/              bytes cut from torn tails, kept for inspection
    <root>/_txn/<time>-<id>.txn, .lock, torn/      transaction records and their lock (txn.py)
    <root>/_groups/<group>.json                    committed positions of each consumer group

Each record is one frame: length, CRC-32C, a magic/version byte, offset, timestamp, key, headers,
then the value stored raw (frames.py). A segment rolls to a new file once it reaches
`segment_bytes` (default 256 MiB); readers find an offset by binary search over segment names and
a sparse in-memory index built by scanning frame headers (segments.py).

`transact` writes one checksummed transaction record holding all its appends and positions to
`_txn/`, fsyncs it, then applies it to the partitions and the group file and deletes it. Once the
record is durable the transaction has happened: whoever finds one left by a crash completes it,
idempotently (txn.py has the protocol and why it is safe). Readers skip records of
transactions not completed yet, so a transaction's records become visible together.

Guarantees on top of `Log`'s:

- Durability follows `fsync`: "always" (the default) returns from `append_many` only after the
  data, and the directory of a new segment, are fsynced, with one fsync per partition touched
  per call, so batching amortizes it; "interval" fsyncs at least every `fsync_interval_ms` (a
  machine crash may lose that much acknowledged data, a process crash loses nothing); "never"
  leaves it to the OS.
- Any number of processes may read and write one root at once: writers lock a partition per
  batch (flock), readers take no lock and never see a partially written frame.
- `read` sees other processes' appends by polling file sizes (2 ms backing off to 20 ms) and
  wakes at once for appends made through the same instance.
- A torn tail (a writer died mid-write) is cut by the next writer, the bytes kept aside;
  corruption anywhere else is refused with `SegmentCorruptionError` (a `LogCorruptionError`)
  naming the file and byte offset, and nothing is cut.
- A failed write or fsync raises `LogWriteError` and leaves no frame of its batch; after a failed
  fsync the instance refuses writes until the log is reopened (writer.py explains why).
- Cancelling a call does not cancel the disk work it started: it completes or fails on the
  writer thread, so an append is done or not done, never half done.
- Known limits: a reader in another process can read records of a batch whose fsync then fails
  (the batch is cut and unacknowledged, and its offsets are later reused); `end_offset` counts
  the records of a transaction that is still being applied.

Blocking I/O runs off the event loop: all writing, locking and fsyncing on one thread per log, in
call order; reads on the default thread pool. Only tiny metadata reads run inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from streamrl.log.base import (
    MARKER_HEADER,
    Append,
    Committed,
    Log,
    LogClosedError,
    LogWriteError,
    Offsets,
    Position,
    Record,
    StreamNotFoundError,
    StreamPartition,
    choose_partition,
    committed_positions,
)
from streamrl.log.file.segments import PartitionReader
from streamrl.log.file.streams import Streams, check_name
from streamrl.log.file.txn import TxnStore
from streamrl.log.file.txn_records import pending_txn_ids
from streamrl.log.file.writer import Item, PartitionWriter, WriterBrokenError

T = TypeVar("T")
log = logging.getLogger("streamrl.log.file")
DEFAULT_SEGMENT_BYTES = 256 << 20
READ_MAX_BYTES = 64 << 20  # a read stops gathering once its values reach this (after >= 1)
POLL_MIN_S, POLL_MAX_S = 0.002, 0.02  # bounds how late a reader in another process sees data
FSYNC_POLICIES = ("always", "interval", "never")


class FileLog(Log):
    """The file log. Build with `FileLog(root, ...)` or `open_log("file://...")`, then `start()`."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FileLog:
        """`file:///abs/dir`, `file://relative/dir` or a bare path. Options: `fsync`,
        `fsync_interval_ms`, `segment_bytes`; `writer_id` (a Kafka notion) is ignored."""
        options.pop("writer_id", None)
        path = url.removeprefix("file://")
        if not path:
            raise ValueError(f"file log URL {url!r} names no directory")
        return cls(path, **options)

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: str = "always",
        fsync_interval_ms: int = 1000,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        if fsync_interval_ms <= 0 or segment_bytes <= 0:
            raise ValueError("fsync_interval_ms and segment_bytes must be positive")
        self.root = Path(root)
        self.url = f"file://{self.root}"
        self.fsync = fsync
        self.fsync_interval_ms = fsync_interval_ms
        self.segment_bytes = segment_bytes
        self._state = "new"
        self._executor: ThreadPoolExecutor | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._appended = asyncio.Event()
        self._streams = Streams(self.root)
        self._readers: dict[StreamPartition, PartitionReader] = {}
        self._writers: dict[StreamPartition, PartitionWriter] = {}
        self._txns = TxnStore(self.root, self._writing)
        self._broken: str | None = None
        self._last_sync = time.monotonic()

    def __repr__(self) -> str:
        return f"FileLog({str(self.root)!r}, fsync={self.fsync!r})"

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "started":
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the root and roll forward any transaction a crash left pending. Idempotent."""
        if self._state == "started":
            return
        if self._state == "stopped":
            raise LogClosedError(f"{self!r} was stopped; open a new one")
        self.root.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="streamrl-filelog")
        self._state = "started"
        try:
            await self._on_writer(self._startup)
        except BaseException:
            await self.stop()
            raise
        if self.fsync == "interval":
            self._flusher = asyncio.create_task(self._flush_periodically())

    async def stop(self) -> None:
        """Finish in-flight writes, fsync ("interval"), close files. Idempotent."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
            await asyncio.to_thread(executor.shutdown, True)

    def _check_open(self) -> None:
        if self._state != "started":
            raise LogClosedError(
                f"{self!r} is {'stopped' if self._state == 'stopped' else 'not started'}"
            )

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _startup(self) -> None:
        if self._txns.pending():
            with self._txns.locked():
                self._txns.roll_forward()

    def _close(self) -> None:
        if self.fsync == "interval":
            with contextlib.suppress(LogWriteError):
                self._sync_dirty()
        for writer in self._writers.values():
            writer.close()
        self._txns.close()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval_ms / 1000)
            try:
                await self._on_writer(self._sync_dirty)
            except LogWriteError:
                log.exception("%s: periodic fsync failed; writes are refused from now on", self)

    def _sync_dirty(self) -> None:
        self._last_sync = time.monotonic()
        for writer in self._writers.values():
            self._guarded(writer.sync_now)

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a writer-thread step; a WriterBrokenError makes the log refuse writes from then."""
        if self._broken is not None:
            raise WriterBrokenError(f"{self!r} refuses writes until reopened: {self._broken}")
        try:
            return fn(*args)
        except WriterBrokenError as err:
            self._broken = str(err)
            raise

    # -- streams -------------------------------------------------------------------------------
    def _sp(self, stream: str, partition: int) -> StreamPartition:
        n = self._streams.count(stream)
        if not 0 <= partition < n:
            raise ValueError(f"partition {partition} out of range for stream {stream!r} ({n})")
        return StreamPartition(stream, partition)

    async def ensure_stream(self, stream: str, num_partitions: int = 1) -> int:
        self._check_open()
        check_name(stream)
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        with contextlib.suppress(StreamNotFoundError):
            return self._streams.count(stream)
        return await self._on_writer(self._streams.create, stream, num_partitions)

    async def num_partitions(self, stream: str) -> int:
        self._check_open()
        return self._streams.count(stream)

    async def list_streams(self, prefix: str = "") -> list[str]:
        self._check_open()
        return await asyncio.to_thread(self._streams.names, prefix)

    def _reader(self, sp: StreamPartition) -> PartitionReader:
        reader = self._readers.get(sp)
        if reader is None:  # setdefault: the loop and the writer thread may race to make it
            pdir = self.root / sp.stream / str(sp.partition)
            reader = self._readers.setdefault(
                sp, PartitionReader(pdir, sp.stream, sp.partition, self._pending_txns)
            )
        return reader

    def _pending_txns(self) -> frozenset[bytes]:
        return pending_txn_ids(self._txns.dir)

    @contextlib.contextmanager
    def _writing(self, sp: StreamPartition) -> Iterator[PartitionWriter]:
        """The partition's writer, locked, its tail recovered, and no transaction pending on it."""
        writer = self._writers.get(sp)
        if writer is None:
            writer = self._writers[sp] = PartitionWriter(
                self.root / sp.stream / str(sp.partition), self._reader(sp),
                sync=self.fsync, segment_bytes=self.segment_bytes,
            )  # fmt: skip
        while True:
            with writer.locked():
                if self._txns.held:  # rolling forward or transacting: apply parts here
                    self._txns.apply_parts(sp, writer)
                    yield writer
                    return
                if not self._txns.touching(sp):
                    yield writer
                    return
            # A transaction whose owner died reserved offsets here: complete it whole first,
            # under the transaction lock (taken without holding a partition lock).
            with self._txns.locked():
                self._txns.roll_forward()

    # -- writing -------------------------------------------------------------------------------
    def _group(
        self, appends: Sequence[Append]
    ) -> tuple[dict[StreamPartition, list[Item]], list[tuple[StreamPartition, int]]]:
        """Validate every target (so a bad one writes nothing) and group records by partition."""
        by_sp: dict[StreamPartition, list[Item]] = {}
        where = []
        for app in appends:
            n = self._streams.count(app.stream)
            p = choose_partition(app.key, n) if app.partition is None else app.partition
            sp = self._sp(app.stream, p)
            items = by_sp.setdefault(sp, [])
            where.append((sp, len(items)))
            items.append((app.key, tuple(app.headers), app.value))
        return by_sp, where

    def _notify(self) -> None:
        self._appended.set()
        self._appended = asyncio.Event()

    async def append_many(self, appends: Sequence[Append]) -> list[Position]:
        self._check_open()
        if any(app.timestamp_ms is not None for app in appends):
            return await self._append_copied(appends)
        by_sp, where = self._group(appends)
        if not by_sp:
            return []
        firsts = await self._on_writer(self._guarded, self._append, by_sp, _now_ms())
        self._notify()
        return [Position(sp.stream, sp.partition, firsts[sp] + i) for sp, i in where]

    async def _append_copied(self, appends: Sequence[Append]) -> list[Position]:
        """Records copied from another log keep their timestamps (a frame holds one per call of
        the writer, so each run of equal timestamps is written on its own), and marker records
        mark their stream as having offset gaps (`contiguous`)."""
        for stream in {a.stream for a in appends if any(k == MARKER_HEADER for k, _ in a.headers)}:
            self._streams.count(stream)  # StreamNotFoundError first
            (self.root / stream / MARKERS_FILE).touch()
        positions: list[Position] = []
        start = 0
        for i in range(1, len(appends) + 1):
            if i == len(appends) or appends[i].timestamp_ms != appends[start].timestamp_ms:
                by_sp, where = self._group(appends[start:i])
                ts = appends[start].timestamp_ms
                firsts = await self._on_writer(self._guarded, self._append, by_sp,
                                               _now_ms() if ts is None else ts)
                positions += [Position(sp.stream, sp.partition, firsts[sp] + j) for sp, j in where]
                start = i
        self._notify()
        return positions

    async def contiguous(self, stream: str) -> bool:
        self._check_open()
        self._streams.count(stream)
        return not (self.root / stream / MARKERS_FILE).exists()

    def _append(
        self, by_sp: dict[StreamPartition, list[Item]], ts: int
    ) -> dict[StreamPartition, int]:
        firsts = {}
        for sp, items in by_sp.items():
            with self._writing(sp) as writer:
                firsts[sp] = writer.append(items, ts)
        if (
            self.fsync == "interval"
            and time.monotonic() - self._last_sync >= self.fsync_interval_ms / 1000
        ):
            self._sync_dirty()
        return firsts

    async def transact(
        self, group: str, offsets: Offsets, appends: Sequence[Append]
    ) -> list[Position]:
        self._check_open()
        positions = {self._sp(*sp): c for sp, c in committed_positions(group, offsets).items()}
        by_sp, where = self._group(appends)
        starts = await self._on_writer(
            self._guarded, self._txns.transact, group, positions, by_sp, _now_ms()
        )
        if by_sp:
            self._notify()
        return [Position(sp.stream, sp.partition, starts[sp] + i) for sp, i in where]

    # -- reading -------------------------------------------------------------------------------
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
        reader = self._reader(self._sp(stream, partition))
        if max_records <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = POLL_MIN_S
        while True:
            appended = self._appended  # taken before reading, so no append slips in between
            records = await asyncio.to_thread(reader.read, offset, max_records, READ_MAX_BYTES)
            if records and any(k == MARKER_HEADER for r in records for k, _ in r.headers):
                visible = [r for r in records if r.header(MARKER_HEADER) is None]
                if not visible:  # only markers here: read on past them
                    offset = records[-1].offset + 1
                    continue
                records = visible
            remaining = deadline - loop.time()
            if records or remaining <= 0:
                return records
            try:
                async with asyncio.timeout(min(delay, remaining)):
                    await appended.wait()
            except TimeoutError:
                delay = min(delay * 2, POLL_MAX_S)
            self._check_open()

    async def end_offset(self, stream: str, partition: int) -> int:
        self._check_open()
        return await asyncio.to_thread(self._reader(self._sp(stream, partition)).end_offset)

    # -- consumer groups -----------------------------------------------------------------------
    async def committed_with_metadata(
        self, group: str, stream: str, partition: int
    ) -> Committed | None:
        self._check_open()
        positions = await self._on_writer(self._txns.committed, group)
        return positions.get(StreamPartition(stream, partition))

    async def commit(self, group: str, offsets: Offsets) -> None:
        self._check_open()
        positions = {self._sp(*sp): c for sp, c in committed_positions(group, offsets).items()}
        await self._on_writer(self._guarded, self._txns.commit, group, positions)


MARKERS_FILE = "MARKERS"  # in a stream's directory: its offsets have gaps (marker records)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
