"""Transaction records of the file log: what one holds, and how it is written and read back.

A record is one file, `<root>/_txn/<time_ns>-<txn id hex>.txn`, holding exactly one frame (the
same framing and CRC-32C as segments, frames.py) whose value is the msgpack `TxnRecord`.
Names sort in time order, and carry the id so readers can tell which transactions are still
incomplete from a directory listing alone. The protocol that uses them is in txn.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import msgspec

from streamrl.log.base import Headers, LogWriteError
from streamrl.log.file.frames import (
    FIXED_SIZE,
    FrameBuilder,
    SegmentCorruptionError,
    Tail,
    parse_head,
    scan,
)
from streamrl.log.file.writer import WriterBrokenError, fsync_dir, write_all

SUFFIX = ".txn"


class TxnItem(msgspec.Struct, array_like=True, frozen=True):
    key: bytes | None
    headers: Headers
    value: bytes


class TxnPart(msgspec.Struct, array_like=True, frozen=True):
    """A transaction's records for one partition, and the offset reserved for the first."""

    stream: str
    partition: int
    start_offset: int
    items: list[TxnItem]


class TxnRecord(msgspec.Struct, frozen=True, kw_only=True):
    txn_id: bytes
    group: str
    timestamp_ms: int
    positions: list[tuple[str, int, int]]  # (stream, partition, next offset) for `group`
    parts: list[TxnPart]
    # (stream, partition, metadata) of the positions committed with metadata; absent in records
    # written before metadata existed, which decode with none
    metadata: list[tuple[str, int, str]] = msgspec.field(default_factory=list)


_decode = msgspec.msgpack.Decoder(TxnRecord).decode


def pending_txn_ids(txn_dir: Path) -> frozenset[bytes]:
    """Ids of the transactions whose records exist: not complete yet, so readers must not see
    their frames. Thread-safe (a directory listing)."""
    try:
        names = os.listdir(txn_dir)
    except FileNotFoundError:
        return frozenset()
    ids = set()
    for name in names:
        if name.endswith(SUFFIX):
            with contextlib.suppress(ValueError):
                ids.add(bytes.fromhex(name[: -len(SUFFIX)].rpartition("-")[2]))
    return frozenset(ids)


def read_record(path: Path) -> TxnRecord | None:
    """The record in `path`, or None if it is torn (cut short, zero-filled, or its only frame
    fails its checksum at the end of the file). Raises SegmentCorruptionError otherwise."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        res = scan(fd, 0, 0, size, verify_all=True, is_last=True)
        if res.tail is Tail.CORRUPT or (res.tail is Tail.CLEAN and res.next_offset > 1):
            raise SegmentCorruptionError(path, res.end, res.reason or "more than one frame")
        if res.next_offset == 0:
            return None
        head = parse_head(os.pread(fd, FIXED_SIZE, 0))
        body = os.pread(fd, head.frame_len - head.meta_len, head.meta_len)
    finally:
        os.close(fd)
    return _decode(body)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_record(txn_dir: Path, record: TxnRecord) -> str:
    """Write `record` and make it durable (file and directory fsynced); returns its name. On a
    failure the file is removed and nothing happened; after a failed fsync the outcome is not
    known for sure (the page cache cannot be trusted), so that raises WriterBrokenError."""
    builder = FrameBuilder()
    builder.add(0, record.timestamp_ms, None, (), msgspec.msgpack.encode(record))
    name = f"{time.time_ns():020d}-{record.txn_id.hex()}{SUFFIX}"
    path = txn_dir / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, builder.finish(), 0)
        finally:
            os.close(fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise LogWriteError(f"{path}: cannot write the transaction record: {err}") from err
    try:
        fsync_file(path)
        fsync_dir(txn_dir)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(path)
            fsync_dir(txn_dir)
        raise WriterBrokenError(f"{path}: fsync of the transaction record failed: {err}") from err
    return name
