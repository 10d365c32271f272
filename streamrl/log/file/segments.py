"""Segments of one partition, and the read side: find an offset, deliver checked records.

A partition directory holds append-only segment files named by their base offset (the offset of
their first record), so the segment holding an offset is a binary search over the names. Within
a segment a sparse index, built by scanning frame headers, gives a byte position at most
`INDEX_EVERY` bytes before any offset.

Readers never write and never take a lock. They see a partition grow by polling file sizes; at
the end of the last segment an incomplete frame is "not written yet" (the writer may be midway,
or dead, in which case the next writer's recovery cuts it), never corruption. A segment is
sealed once a later one exists (a writer finishes a segment before creating the next), and in a
sealed segment anything that is not a whole, valid frame is corruption. Every delivered record's
checksum is verified; on a bad frame a read returns the good records before it, and a read that
would start at it raises `SegmentCorruptionError` naming the file and byte offset.

Records written by a transaction carry its id, and stay invisible while its transaction record
exists (txn.py): a read stops before the first of them, so a transaction's records become
visible together, once all of it is applied, like Kafka's read_committed.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Callable
from pathlib import Path

import crc32c

from streamrl.log.base import Record
from streamrl.log.file.frames import (
    CHUNK,
    FIXED_SIZE,
    FLAG_KEY,
    FLAG_TXN,
    TXN_ID_SIZE,
    SegmentCorruptionError,
    ShortRead,
    Tail,
    Window,
    check_head,
    decode_headers,
    parse_head,
    scan,
)

SEGMENT_SUFFIX = ".seg"


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}{SEGMENT_SUFFIX}"


def list_segments(pdir: Path) -> list[int]:
    """Base offsets of the segments in `pdir`, ascending ([] if the directory does not exist)."""
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    return sorted(int(n[: -len(SEGMENT_SUFFIX)]) for n in names if n.endswith(SEGMENT_SUFFIX))


class _BadFrame(Exception):  # internal signal
    def __init__(self, pos: int, reason: str) -> None:
        self.pos, self.reason = pos, reason


class _Seg:
    """What a reader knows about one segment: the scanned prefix and its sparse index."""

    def __init__(self, pdir: Path, base: int, sealed: bool) -> None:
        self.base = base
        self.path = pdir / segment_name(base)
        self.sealed = sealed
        self.reset()

    def reset(self) -> None:
        self.end = 0  # byte position after the last scanned good frame
        self.next_offset = self.base
        self.idx_offsets: list[int] = []
        self.idx_pos: list[int] = []
        self.bad: str | None = None  # why the scan stopped at `end` for good
        self.complete = False  # sealed and scanned to its end

    def extend(self) -> Tail:
        """Scan from the known end to the current end of the file."""
        if self.bad is not None:
            return Tail.CORRUPT
        if self.complete:
            return Tail.CLEAN
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return Tail.PENDING  # the writer undid a failed roll; nothing to read here
        try:
            size = os.fstat(fd).st_size
            if size < self.end:  # a writer cut a failed batch back; rebuild the view
                self.reset()
            last = self.idx_pos[-1] if self.idx_pos else -(1 << 62)
            res = scan(
                fd, self.end, self.next_offset, size,
                verify_all=False, is_last=not self.sealed, last_indexed=last,
            )  # fmt: skip
        finally:
            os.close(fd)
        self.end, self.next_offset = res.end, res.next_offset
        for off, pos in res.index:
            self.idx_offsets.append(off)
            self.idx_pos.append(pos)
        if res.tail is Tail.CORRUPT:
            self.bad = res.reason
        elif res.tail is Tail.CLEAN and self.sealed:
            self.complete = True
        return res.tail


class PartitionReader:
    """Reads one partition. Thread-safe: reads of one partition hold its lock while they look up
    positions, and read the (immutable) frames outside it."""

    def __init__(
        self,
        pdir: Path,
        stream: str,
        partition: int,
        pending_txns: Callable[[], frozenset[bytes]] = frozenset,
    ) -> None:
        self.pdir = pdir
        self.stream = stream
        self.partition = partition
        self._pending_txns = pending_txns
        self._lock = threading.Lock()
        self._segs: list[_Seg] = []
        self._bases: list[int] = []

    # -- finding -----------------------------------------------------------------------------
    def _relist(self) -> None:
        """Pick up segments created since the last look (existing ones keep their state)."""
        for base in list_segments(self.pdir):
            if not self._bases or base > self._bases[-1]:
                if self._segs:
                    self._segs[-1].sealed = True
                self._segs.append(_Seg(self.pdir, base, sealed=False))
                self._bases.append(base)

    def _refresh_tail(self) -> None:
        """Bring the view of the last segment up to date, following rolls to new segments."""
        if not self._segs:
            self._relist()
            if not self._segs:
                return
        while True:
            last = self._segs[-1]
            tail = last.extend()
            if tail is Tail.CORRUPT:
                return
            if tail is Tail.CLEAN and not (self.pdir / segment_name(last.next_offset)).exists():
                return
            count = len(self._segs)
            self._relist()
            if len(self._segs) == count:
                return  # still the last segment: the incomplete frame is not written yet
            # A later segment exists, so `last` is sealed: scan the rest of it under that rule.
            last.extend()
            self._check_chain(len(self._segs) - 2)

    def _check_chain(self, i: int) -> None:
        seg = self._segs[i]
        if seg.complete and seg.next_offset != self._segs[i + 1].base:
            seg.bad = f"segment ends at offset {seg.next_offset} but the next starts elsewhere"

    def _segment_for(self, offset: int) -> int:
        i = max(bisect.bisect_right(self._bases, offset) - 1, 0)
        seg = self._segs[i]
        if seg.sealed and not seg.complete:
            seg.extend()
            if i + 1 < len(self._segs):
                self._check_chain(i)
        return i

    def end_offset(self) -> int:
        with self._lock:
            self._refresh_tail()
            return self._segs[-1].next_offset if self._segs else 0

    def _locate(self, offset: int) -> tuple[_Seg, int, int] | None:
        """(segment, byte position of `offset`, offset to stop before), None if not written."""
        if not self._segs or offset >= self._segs[-1].base:
            self._refresh_tail()  # reads in sealed segments need not look for new data
        if not self._segs:
            return None
        seg = self._segs[self._segment_for(offset)]
        offset = max(offset, seg.base)
        if offset >= seg.next_offset:
            if seg.bad is not None:
                raise SegmentCorruptionError(seg.path, seg.end, seg.bad)
            return None
        j = bisect.bisect_right(seg.idx_offsets, offset) - 1
        at, pos = seg.idx_offsets[j], seg.idx_pos[j]
        if at < offset:
            fd = os.open(seg.path, os.O_RDONLY)
            try:
                win = Window(fd, seg.end)
                while at < offset:  # headers in the scanned prefix were checked by the scan
                    pos += parse_head(win.view(pos, FIXED_SIZE)).frame_len
                    at += 1
            finally:
                os.close(fd)
        return seg, pos, seg.next_offset

    def txn_id_at(self, offset: int) -> bytes | None:
        """The transaction id stored in the frame holding `offset` (None if it has none)."""
        with self._lock:
            found = self._locate(offset)
        if found is None:
            return None
        seg, pos, _ = found
        fd = os.open(seg.path, os.O_RDONLY)
        try:
            buf = os.pread(fd, FIXED_SIZE + TXN_ID_SIZE, pos)
        finally:
            os.close(fd)
        head = parse_head(buf)
        return buf[FIXED_SIZE:] if head.flags & FLAG_TXN else None

    # -- reading -----------------------------------------------------------------------------
    def read(self, offset: int, max_records: int, max_bytes: int) -> list[Record]:
        """Checked records from `offset` on (at most `max_records`; stops once `max_bytes` of
        values are gathered, after at least one record)."""
        offset = max(offset, 0)
        for attempt in range(2):
            with self._lock:
                found = self._locate(offset)
            if found is None:
                return []
            seg, pos, stop = found
            out: list[Record] = []
            try:
                self._deliver(seg, pos, offset, stop, max_records, max_bytes, out)
                return out
            except _BadFrame as bad:
                if out:
                    return out  # the good records before it; the next read reports it
                if attempt == 1:
                    raise SegmentCorruptionError(seg.path, bad.pos, bad.reason) from None
                with self._lock:  # the view may be stale (a failed batch was cut): rebuild once
                    seg.reset()
        raise AssertionError("unreachable")

    def _deliver(
        self, seg: _Seg, pos: int, offset: int, stop: int,
        max_records: int, max_bytes: int, out: list[Record],
    ) -> None:  # fmt: skip
        fd = os.open(seg.path, os.O_RDONLY)
        try:
            win = Window(fd, seg.end)
            num_bytes = 0
            pending: frozenset[bytes] | None = None
            while offset < stop and len(out) < max_records and num_bytes < max_bytes:
                try:
                    record, frame_len, txn_id = self._frame(fd, win, pos, offset)
                except ShortRead:
                    raise _BadFrame(pos, "file shorter than its scanned frames") from None
                if txn_id is not None:
                    if pending is None:
                        pending = self._pending_txns()
                    if txn_id in pending:
                        return  # its transaction is not complete: visible together, later
                out.append(record)
                num_bytes += len(record.value)
                pos += frame_len
                offset += 1
        finally:
            os.close(fd)

    def _frame(
        self, fd: int, win: Window, pos: int, offset: int
    ) -> tuple[Record, int, bytes | None]:
        head = parse_head(win.view(pos, FIXED_SIZE))
        reason = check_head(head, offset)
        if reason is not None:
            raise _BadFrame(pos, reason)
        meta_len, frame_len = head.meta_len, head.frame_len
        if frame_len <= CHUNK:
            frame = win.view(pos, frame_len)
            crc = crc32c.crc32c(frame[8:], crc32c.crc32c(frame[:4]))
            meta, value = frame[:meta_len], bytes(frame[meta_len:])
        else:  # large value: read it straight into its own bytes object, no second copy
            meta = memoryview(os.pread(fd, meta_len, pos))
            value = os.pread(fd, frame_len - meta_len, pos + meta_len)
            if len(meta) < meta_len or len(value) < frame_len - meta_len:
                raise ShortRead
            crc = crc32c.crc32c(value, crc32c.crc32c(meta[8:], crc32c.crc32c(meta[:4])))
        if crc != head.crc:
            raise _BadFrame(pos, "checksum mismatch")
        txn_id = None
        at = FIXED_SIZE
        if head.flags & FLAG_TXN:
            txn_id, at = bytes(meta[at : at + TXN_ID_SIZE]), at + TXN_ID_SIZE
        key = bytes(meta[at : at + head.key_len]) if head.flags & FLAG_KEY else None
        at += head.key_len
        headers = decode_headers(meta[at : at + head.headers_len]) if head.headers_len else ()
        record = Record(
            stream=self.stream,
            partition=self.partition,
            offset=offset,
            value=value,
            key=key,
            headers=headers,
            timestamp_ms=head.timestamp_ms,
        )
        return record, frame_len, txn_id
