"""Frames of the file log: one record per frame, length-prefixed and CRC-32C checked.

    byte  size  field
     0     4    frame_len     u32 LE: bytes in the whole frame, this field included
     4     4    crc           CRC-32C (Castagnoli) of bytes [0:4] ++ [8:frame_len]
     8     1    magic         0xF1 = layout version 1; a layout change takes a new value
     9     1    flags         bit 0: a key is present; bit 1: a transaction id is present
    10     2    reserved      0
    12     8    offset        i64 LE, the record's offset in its partition
    20     8    timestamp_ms  i64 LE
    28     4    key_len       u32 LE
    32     4    headers_len   u32 LE: bytes of msgpack ((name, value), ...); 0 for no headers
    36    16    txn_id        only with flag bit 1: the transaction that wrote the record
     .   key_len      key
     .   headers_len  headers
     .   the rest     value, stored raw

Why this shape: the length comes first so a scan steps from frame to frame reading headers only.
The CRC sits at a fixed place and covers every other byte, the length included, so a flipped
length bit is caught by the checksum instead of sending the scan somewhere else unnoticed. The
offset is stored in the frame, so a misplaced or repeated frame is detected too. The value is
never re-encoded: it is written straight from the caller's buffer (writev) and checksummed in
place, which keeps MB-size trajectory batches at disk speed.

`scan` walks frames and classifies where the walk stopped (`Tail`); the writer and the readers
decide what that means for them (see segments.py and writer.py).
"""

from __future__ import annotations

import enum
import os
import struct
from typing import NamedTuple

import crc32c
import msgspec

from streamrl.log.base import Headers, LogCorruptionError

MAGIC_V1 = 0xF1
FIXED = struct.Struct("<IIBBHqqII")
FIXED_SIZE = FIXED.size
TXN_ID_SIZE = 16
FLAG_KEY = 0x1
FLAG_TXN = 0x2
MAX_FRAME = 0xFFFFFFFF
# Values at least this big are written as their own iovec (never copied); smaller frames are
# packed into one buffer so a batch of small records is one cheap writev.
INLINE_VALUE_MAX = 64 * 1024
CHUNK = 256 * 1024  # read granularity of scans and reads
INDEX_EVERY = 64 * 1024  # bytes between sparse index entries
ZERO_TAIL = "zero-filled tail"  # the reason `scan` gives for space a crash left unwritten

_encode_headers = msgspec.msgpack.Encoder().encode
decode_headers = msgspec.msgpack.Decoder(tuple[tuple[str, bytes], ...]).decode


class SegmentCorruptionError(LogCorruptionError):
    """A stored frame failed its checksum or framing. Names the file and the byte offset of the
    first bad frame; nothing from there on is delivered, and the file is left as it is."""

    def __init__(self, path: str | os.PathLike[str], byte_offset: int, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason} at byte {byte_offset}")
        self.path = os.fspath(path)
        self.byte_offset = byte_offset
        self.reason = reason


class Head(NamedTuple):
    frame_len: int
    crc: int
    magic: int
    flags: int
    reserved: int
    offset: int
    timestamp_ms: int
    key_len: int
    headers_len: int

    @property
    def meta_len(self) -> int:
        """Bytes before the value."""
        txn = TXN_ID_SIZE if self.flags & FLAG_TXN else 0
        return FIXED_SIZE + txn + self.key_len + self.headers_len


def parse_head(buf: memoryview | bytes) -> Head:
    return Head._make(FIXED.unpack_from(buf, 0))


def check_head(head: Head, expected_offset: int) -> str | None:
    """Why the header cannot start a valid frame at `expected_offset`, or None if it can."""
    if head.magic != MAGIC_V1:
        return f"unknown frame magic 0x{head.magic:02x}"
    if head.flags & ~(FLAG_KEY | FLAG_TXN) or head.reserved:
        return "bad frame flags"
    if head.key_len and not head.flags & FLAG_KEY:
        return "key bytes without the key flag"
    if head.frame_len < head.meta_len:
        return f"impossible frame length {head.frame_len}"
    if head.offset != expected_offset:
        return f"frame holds offset {head.offset} where {expected_offset} belongs"
    return None


class FrameBuilder:
    """Buffers for a batch of frames, in write order. Small frames share one buffer; large values
    are passed through uncopied."""

    def __init__(self) -> None:
        self.buffers: list[bytes | bytearray | memoryview] = []
        self.nbytes = 0
        self._small = bytearray()

    def add(
        self,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        headers: Headers,
        value: bytes | bytearray | memoryview,
        txn_id: bytes | None = None,
    ) -> int:
        """Encode one frame; returns its size in bytes."""
        hdr = _encode_headers(headers) if headers else b""
        flags = (FLAG_KEY if key is not None else 0) | (FLAG_TXN if txn_id is not None else 0)
        if txn_id is not None and len(txn_id) != TXN_ID_SIZE:
            raise ValueError(f"txn id must be {TXN_ID_SIZE} bytes")
        key_b = key if key is not None else b""
        txn_b = txn_id if txn_id is not None else b""
        meta_len = FIXED_SIZE + len(txn_b) + len(key_b) + len(hdr)
        total = meta_len + len(value)
        if total > MAX_FRAME:
            raise ValueError(f"record of {total} bytes exceeds the frame limit of {MAX_FRAME}")
        head = bytearray(meta_len)
        FIXED.pack_into(
            head, 0, total, 0, MAGIC_V1, flags, 0, offset, timestamp_ms, len(key_b), len(hdr)
        )
        head[FIXED_SIZE:] = b"".join((txn_b, key_b, hdr))
        mv = memoryview(head)
        crc = crc32c.crc32c(mv[8:], crc32c.crc32c(mv[:4]))
        struct.pack_into("<I", head, 4, crc32c.crc32c(value, crc))
        if len(value) >= INLINE_VALUE_MAX:
            self._flush_small()
            self.buffers += (head, value)
        else:
            self._small += head
            self._small += value
        self.nbytes += total
        return total

    def _flush_small(self) -> None:
        if self._small:
            self.buffers.append(self._small)
            self._small = bytearray()

    def finish(self) -> list[bytes | bytearray | memoryview]:
        self._flush_small()
        return self.buffers


class ShortRead(Exception):  # internal signal, never escapes this package
    """The file ended before bytes a scan expected (it was truncated meanwhile)."""


class Window:
    """Buffered positional reads of one file, never past `size`."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._base = 0
        self._buf = b""

    def view(self, pos: int, n: int) -> memoryview:
        if pos < self._base or pos + n > self._base + len(self._buf):
            want = max(n, min(CHUNK, self.size - pos))
            self._buf = os.pread(self.fd, want, pos)
            self._base = pos
            if len(self._buf) < n:
                raise ShortRead
        start = pos - self._base
        return memoryview(self._buf)[start : start + n]


def frame_crc(win: Window, pos: int, frame_len: int) -> int:
    """The CRC-32C of the frame at `pos` as stored (every byte except the crc field)."""
    if frame_len <= CHUNK:
        mv = win.view(pos, frame_len)
        return crc32c.crc32c(mv[8:], crc32c.crc32c(mv[:4]))
    crc = crc32c.crc32c(win.view(pos, 4))
    at, end = pos + 8, pos + frame_len
    while at < end:  # large frames stream through in pieces, never whole in memory
        piece = os.pread(win.fd, min(4 << 20, end - at), at)
        if not piece:
            raise ShortRead
        crc = crc32c.crc32c(piece, crc)
        at += len(piece)
    return crc


class Tail(enum.Enum):
    CLEAN = "clean"  # the data ends right after a whole frame
    PENDING = "pending"  # it ends inside a frame: still being written, or torn by a crash
    CORRUPT = "corrupt"  # a bad frame with data after it, or anything wrong in a sealed segment


class Scan(NamedTuple):
    end: int  # byte position after the last good frame
    next_offset: int  # offset after the last good frame
    tail: Tail
    reason: str
    index: list[tuple[int, int]]  # sparse (offset, byte position) samples of the good frames


def scan(
    fd: int,
    pos: int,
    offset: int,
    size: int,
    *,
    verify_all: bool,
    is_last: bool,
    last_indexed: int = -INDEX_EVERY,
) -> Scan:
    """Walk frames from `pos` (expected to hold `offset`) up to `size`.

    Every frame's header is checked; checksums only with `verify_all`, and always for the frame
    that ends exactly at `size` of the last segment, since that is where a torn write would show.
    In the last segment (`is_last`) a frame cut off by the end of the data, a bad final frame,
    or an all-zero tail (space a crash left unwritten) is PENDING; anything else wrong is CORRUPT.
    """
    win = Window(fd, size)
    index: list[tuple[int, int]] = []

    def stop(tail: Tail, reason: str = "") -> Scan:
        return Scan(pos, offset, tail, reason, index)

    try:
        while pos < size:
            if size - pos < FIXED_SIZE:
                if is_last:
                    return stop(Tail.PENDING, "data ends inside a frame header")
                return stop(Tail.CORRUPT, "sealed segment ends inside a frame header")
            head = parse_head(win.view(pos, FIXED_SIZE))
            reason = check_head(head, offset)
            if reason is not None:
                if is_last and all_zero(fd, pos, size):
                    return stop(Tail.PENDING, ZERO_TAIL)
                return stop(Tail.CORRUPT, reason)
            end = pos + head.frame_len
            if end > size:
                if is_last:
                    return stop(Tail.PENDING, "data ends inside a frame")
                return stop(Tail.CORRUPT, "frame runs past the end of a sealed segment")
            torn_spot = is_last and end == size
            if (verify_all or torn_spot) and frame_crc(win, pos, head.frame_len) != head.crc:
                if torn_spot:
                    return stop(Tail.PENDING, "checksum mismatch in the final frame")
                return stop(Tail.CORRUPT, "checksum mismatch")
            if pos - last_indexed >= INDEX_EVERY:
                index.append((offset, pos))
                last_indexed = pos
            pos, offset = end, offset + 1
    except ShortRead:
        return stop(Tail.PENDING, "file shrank during the scan")
    return stop(Tail.CLEAN)


def all_zero(fd: int, start: int, end: int) -> bool:
    at = start
    while at < end:
        piece = os.pread(fd, min(4 << 20, end - at), at)
        if not piece:
            break
        if piece.count(0) != len(piece):
            return False
        at += len(piece)
    return True


def find_frame(fd: int, start: int, end: int, offset: int) -> int | None:
    """Position of a whole, checksum-valid frame holding `offset` strictly after `start` and
    before `end`, or None. A torn tail never contains one: a crash cuts only the final frame.
    So if one is found, the "partial frame" before it is really a frame with a damaged length."""
    data = os.pread(fd, end - start, start)
    needle = struct.pack("<q", offset)
    at = data.find(needle, FIXED_SIZE)
    while at != -1:
        pos = at - 12  # the offset field sits at byte 12 of a frame
        if pos > 0 and len(data) - pos >= FIXED_SIZE:
            head = parse_head(memoryview(data)[pos:])
            if check_head(head, offset) is None and pos + head.frame_len <= len(data):
                win = Window(fd, end)
                if frame_crc(win, start + pos, head.frame_len) == head.crc:
                    return start + pos
        at = data.find(needle, at + 1)
    return None
