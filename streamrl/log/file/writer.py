"""The write side of one partition: locking, tail recovery, appends, undo of failed writes.

Every append batch runs under an exclusive `flock` on `<partition>/.lock`, so any number of
processes may write one partition (the shared `events` stream is written by everyone). Under the
lock a writer first re-reads the tail: if the active segment changed size since it last looked,
it checksums the new frames; if another writer rolled to a new segment, it follows. A partial
frame found there was left by a writer that died mid-write (a live one would hold the lock); it
is cut off exactly at the end of the last whole, valid frame, the cut bytes are kept in
`<partition>/torn/<segment>-<byte>.bin`, and a warning is logged. Anything else wrong (a bad
frame with data after it) is corruption: the writer refuses the partition and truncates nothing.

A failed write or fsync acknowledges nothing of its batch: the segment is cut back to the last
acknowledged frame end (and the cut fsynced), so no frame of the batch can pass validation later.
After a failed fsync the state of the page cache is unknown (Linux may have dropped the dirty
pages and reports the error once), so the writer refuses all further writes until the log is
reopened, and the reopening writer re-verifies the tail. A failed write whose undo succeeded
(ENOSPC, EDQUOT) leaves a clean log, so it is reported as retriable.

A batch never spans segments: the writer rolls to a new segment before a batch once the active
one has reached `segment_bytes`, so a segment may overshoot by one batch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from streamrl.log.base import Headers, LogCorruptionError, LogWriteError
from streamrl.log.file.frames import (
    ZERO_TAIL,
    FrameBuilder,
    SegmentCorruptionError,
    Tail,
    find_frame,
    scan,
)
from streamrl.log.file.segments import PartitionReader, list_segments, segment_name

log = logging.getLogger("streamrl.log.file")

Item = tuple[bytes | None, Headers, bytes]  # key, headers, value
IOV_MAX = 1024
_RETRIABLE = frozenset({errno.ENOSPC, errno.EDQUOT})


class WriterBrokenError(LogWriteError):
    """A write failed in a way that leaves the on-disk state unknown (an fsync failed, or undoing
    a failed write failed). The log refuses writes until it is reopened."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, buffers: Sequence[bytes | bytearray | memoryview], pos: int) -> None:
    """pwritev every buffer at `pos`, resuming after short writes."""
    views = [memoryview(b) for b in buffers if len(b)]
    i = 0
    while i < len(views):
        n = os.pwritev(fd, views[i : i + IOV_MAX], pos)
        if n <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        pos += n
        while n and i < len(views):
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


class PartitionWriter:
    """Appends to one partition. Used only from the owning log's single writer thread."""

    def __init__(
        self, pdir: Path, reader: PartitionReader, *, sync: str, segment_bytes: int
    ) -> None:
        self.pdir = pdir
        self.reader = reader
        self.sync = sync
        self.segment_bytes = segment_bytes
        self.dirty = False  # written but not fsynced ("interval" and "never")
        self._lock_fd: int | None = None
        self._fd: int | None = None  # the active segment, read-write
        self._base = -1  # its base offset; -1 while the partition has no segment
        self.end = 0  # byte position after its last whole, valid frame
        self.next_offset = 0

    @property
    def _path(self) -> Path:
        return self.pdir / segment_name(self._base)

    @contextlib.contextmanager
    def locked(self) -> Iterator[PartitionWriter]:
        """Hold the partition's file lock with the tail re-read and recovered."""
        if self._lock_fd is None:
            self.pdir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.pdir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            try:
                self._refresh()
            except OSError as err:
                raise LogWriteError(f"{self.pdir}: cannot read or recover the tail: {err}") from err
            yield self
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    # -- the tail ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        if self._fd is None:
            bases = list_segments(self.pdir)
            if not bases:
                self._base, self.end, self.next_offset = -1, 0, 0
                return
            self._open(bases[-1])
            self._verify_from(0, bases[-1])
        else:
            size = os.fstat(self._fd).st_size
            if size < self.end:  # cut below what we saw: trust nothing, verify it all again
                self._verify_from(0, self._base)
            elif size > self.end:  # other writers appended: checksum their frames
                self._verify_from(self.end, self.next_offset)
        # Follow rolls made by other writers: a new segment is named by the offset it starts at.
        # (Looked up on every lock: writers with a smaller segment_bytes roll sooner.)
        while self._base != self.next_offset and os.path.exists(
            f"{self.pdir}/{segment_name(self.next_offset)}"
        ):
            self._open(self.next_offset)
            self._verify_from(0, self.next_offset)

    def _open(self, base: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._fd = os.open(self.pdir / segment_name(base), os.O_RDWR)
        self._base = base

    def _verify_from(self, pos: int, offset: int) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        res = scan(self._fd, pos, offset, size, verify_all=True, is_last=True)
        if res.tail is Tail.CORRUPT:
            raise SegmentCorruptionError(self._path, res.end, res.reason)
        if res.tail is Tail.PENDING:
            self._recover_torn(res.end, res.next_offset, size, res.reason)
        self.end, self.next_offset = res.end, res.next_offset

    def _recover_torn(self, end: int, next_offset: int, size: int, why: str) -> None:
        """Cut a dead writer's partial last frame; keep the bytes. Refuse if it is not a tail."""
        assert self._fd is not None
        if any(b > self._base for b in list_segments(self.pdir)):
            raise SegmentCorruptionError(self._path, end, f"{why} in a sealed segment")
        if why != ZERO_TAIL and find_frame(self._fd, end, size, next_offset + 1) is not None:
            # A crash cuts only the final frame; a whole frame after this one means its length
            # field is damaged, and cutting here would throw acknowledged records away.
            raise SegmentCorruptionError(self._path, end, "frame length runs past later frames")
        torn_dir = self.pdir / "torn"
        torn_dir.mkdir(exist_ok=True)
        aside = torn_dir / f"{segment_name(self._base)}-{end}.bin"
        if aside.exists():
            aside = aside.with_name(f"{aside.stem}-{time.time_ns()}.bin")
        out = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            at = end
            while at < size:
                piece = os.pread(self._fd, min(4 << 20, size - at), at)
                write_all(out, [piece], at - end)
                at += len(piece)
            os.fsync(out)
        finally:
            os.close(out)
        fsync_dir(torn_dir)
        os.ftruncate(self._fd, end)
        os.fsync(self._fd)
        log.warning(
            "%s: cut a torn tail of %d bytes at byte %d (%s); the bytes are kept in %s",
            self._path, size - end, end, why, aside,
        )  # fmt: skip

    # -- appending -----------------------------------------------------------------------------
    def append(self, items: Sequence[Item], timestamp_ms: int, txn_id: bytes | None = None) -> int:
        """Write `items` as the next records (caller holds `locked()`); returns the first offset.
        Raises LogWriteError having acknowledged and kept nothing of the batch."""
        first = self.next_offset
        builder = FrameBuilder()
        for i, (key, headers, value) in enumerate(items):
            builder.add(first + i, timestamp_ms, key, headers, value, txn_id)
        buffers = builder.finish()
        created = self._fd is None or (self.end >= self.segment_bytes and first > self._base)
        if created:
            self._roll()
        assert self._fd is not None
        try:
            write_all(self._fd, buffers, self.end)
        except OSError as err:
            self._undo(err, "write")
        if self.sync == "always":
            try:
                os.fsync(self._fd)
                if created:
                    fsync_dir(self.pdir)
            except OSError as err:
                self._undo(err, "fsync")
        else:
            self.dirty = True
        self.end += builder.nbytes
        self.next_offset += len(items)
        return first

    def _roll(self) -> None:
        if self._fd is not None:
            if self.dirty and self.sync != "never":
                self.sync_now()  # a segment is whole on disk before the next one exists
            os.close(self._fd)
            self._fd = None
        self._base, self.end = self.next_offset, 0
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as err:  # the next lock re-reads the partition from its directory
            raise LogWriteError(f"{self.pdir}: cannot start a new segment: {err}") from err

    def _undo(self, err: OSError, op: str) -> None:
        """Take back a failed batch, then raise. A segment the batch created stays, empty: it
        is named by the next offset, which is still right, and readers may have seen it."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self.end)
            os.fsync(self._fd)
        except OSError as undo_err:
            raise WriterBrokenError(
                f"{self.pdir}: {op} failed ({err}) and cutting the batch back failed too "
                f"({undo_err}); reopen the log after checking the disk"
            ) from err
        if op == "fsync":
            raise WriterBrokenError(
                f"{self.pdir}: fsync failed ({err}); the batch was not acknowledged and was cut; "
                "writes are refused until the log is reopened"
            ) from err
        exc = LogWriteError(f"{self.pdir}: write failed ({err}); nothing of the batch was kept")
        exc.retriable = err.errno in _RETRIABLE
        raise exc from err

    def sync_now(self) -> None:
        """fsync what "interval"/"never" left unsynced (no lock needed: fsync covers the file)."""
        if self.dirty and self._fd is not None:
            try:
                os.fsync(self._fd)
                fsync_dir(self.pdir)
            except OSError as err:
                raise WriterBrokenError(f"{self.pdir}: fsync failed ({err})") from err
        self.dirty = False

    def apply_txn_part(
        self, txn_id: bytes, start: int, items: Sequence[Item], timestamp_ms: int
    ) -> None:
        """Make records `start`.. of this partition be `items` of transaction `txn_id`, writing
        only those not there yet (caller holds `locked()`). Idempotent."""
        if self.next_offset < start:
            raise LogCorruptionError(
                f"{self.pdir}: transaction {txn_id.hex()} reserved offset {start}, but the "
                f"partition ends at {self.next_offset}"
            )
        present = min(self.next_offset - start, len(items))
        if present and self.reader.txn_id_at(start) != txn_id:
            raise LogCorruptionError(
                f"{self.pdir}: offset {start}, reserved by transaction {txn_id.hex()}, holds "
                "another record"
            )
        if present < len(items):
            self.append(items[present:], timestamp_ms, txn_id)
