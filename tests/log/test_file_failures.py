"""File log: a failed write or fsync acknowledges nothing, and no frame of its batch survives.

Failures are injected by replacing `os.fsync` (EIO) and `os.pwritev` (the disk filling up after
a byte budget) in the writing process.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from streamrl.log import Append, LogWriteError, StreamPartition
from streamrl.log.file import FileLog
from streamrl.log.file.frames import Tail, scan
from streamrl.log.file.segments import list_segments, segment_name
from streamrl.log.file.txn import TransactionInDoubtError

S = "traj"


def batch(tag: str, n: int = 4) -> list[Append]:
    # One big value, so the batch spans many pages and iovecs.
    return [
        Append(stream=S, value=f"{tag}{i}".encode() * (1 + 40_000 * (i == 1))) for i in range(n)
    ]


async def started(root: Path, **options: object) -> tuple[FileLog, list[bytes]]:
    log = FileLog(root, **options)  # type: ignore[arg-type]
    await log.start()
    await log.ensure_stream(S, 1)
    acked = batch("ok")
    await log.append_many(acked)
    return log, [a.value for a in acked]


async def values(log: FileLog) -> list[bytes]:
    out, offset = [], 0
    while page := await log.read(S, 0, offset):
        out += [r.value for r in page]
        offset = page[-1].offset + 1
    return out


def whole_frames(root: Path) -> int:
    """Checksum-valid frames on disk, counted straight from the segment files."""
    pdir = root / S / "0"
    total = 0
    for base in list_segments(pdir):
        fd = os.open(pdir / segment_name(base), os.O_RDONLY)
        try:
            res = scan(fd, 0, base, os.fstat(fd).st_size, verify_all=True, is_last=True)
        finally:
            os.close(fd)
        assert res.tail is Tail.CLEAN
        total += res.next_offset - base
    return total


def fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "injected EIO")

    monkeypatch.setattr(os, "fsync", fsync)


def fill_disk(monkeypatch: pytest.MonkeyPatch, budget: int, fail_call: int = 0) -> None:
    """pwritev writes `budget` more bytes, then fails with ENOSPC (from call `fail_call` on)."""
    state = {"left": budget, "calls": 0}

    def pwritev(fd: int, buffers: list[memoryview], offset: int) -> int:
        state["calls"] += 1
        if state["calls"] <= fail_call:
            return os.pwrite(fd, b"".join(buffers), offset)
        if state["left"] <= 0:
            raise OSError(errno.ENOSPC, "injected ENOSPC")
        n = os.pwrite(fd, b"".join(buffers)[: state["left"]], offset)
        state["left"] -= n
        return n

    monkeypatch.setattr(os, "pwritev", pwritev)


@pytest.mark.parametrize("segment_bytes", [1 << 20, 1], ids=["same-segment", "new-segment"])
async def test_a_failed_fsync_acknowledges_nothing_and_stops_writes_until_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, segment_bytes: int
) -> None:
    log, acked = await started(tmp_path, segment_bytes=segment_bytes)
    fail_fsync(monkeypatch)
    with pytest.raises(LogWriteError) as info:
        await log.append_many(batch("lost"))
    assert not info.value.retriable
    monkeypatch.undo()
    # The page cache is not trusted after a failed fsync: no more writes from this instance.
    with pytest.raises(LogWriteError, match="reopened"):
        await log.append(S, b"refused")
    assert await values(log) == acked
    await log.stop()
    assert whole_frames(tmp_path) == len(acked)
    async with FileLog(tmp_path, segment_bytes=segment_bytes) as again:
        assert await values(again) == acked
        assert (await again.append(S, b"next")).offset == len(acked)
        assert await values(again) == [*acked, b"next"]


@pytest.mark.parametrize("budget", [0, 1, 35, 37, 5000, 40_000])
async def test_a_full_disk_acknowledges_nothing_and_keeps_no_partial_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    log, acked = await started(tmp_path)
    seg = tmp_path / S / "0" / segment_name(0)
    size = seg.stat().st_size
    fill_disk(monkeypatch, budget)
    with pytest.raises(LogWriteError) as info:
        await log.append_many(batch("lost"))
    assert info.value.retriable  # freeing space helps: the log is clean
    assert seg.stat().st_size == size
    monkeypatch.undo()
    # The undo left a clean log, so this instance goes on writing at the right offset.
    assert (await log.append(S, b"next")).offset == len(acked)
    await log.stop()
    assert whole_frames(tmp_path) == len(acked) + 1
    async with FileLog(tmp_path) as again:
        assert await values(again) == [*acked, b"next"]


async def test_a_full_disk_while_starting_a_segment_leaves_it_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, acked = await started(tmp_path, segment_bytes=1)
    fill_disk(monkeypatch, 100)
    with pytest.raises(LogWriteError):
        await log.append_many(batch("lost"))
    assert list_segments(tmp_path / S / "0") == [0, len(acked)]
    assert (tmp_path / S / "0" / segment_name(len(acked))).stat().st_size == 0
    monkeypatch.undo()
    assert (await log.append(S, b"next")).offset == len(acked)
    await log.stop()
    async with FileLog(tmp_path) as again:
        assert await values(again) == [*acked, b"next"]


@pytest.mark.parametrize("failure", ["fsync", "enospc"])
async def test_a_transaction_whose_record_cannot_be_written_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    log, acked = await started(tmp_path)
    if failure == "fsync":
        fail_fsync(monkeypatch)
    else:
        fill_disk(monkeypatch, 10)
    with pytest.raises(LogWriteError):
        await log.transact("trainer", {StreamPartition(S, 0): 4}, batch("txn"))
    monkeypatch.undo()
    await log.stop()
    async with FileLog(tmp_path) as again:
        assert await values(again) == acked
        assert await again.committed("trainer", S, 0) is None
    assert not [n for n in os.listdir(tmp_path / "_txn") if n.endswith(".txn")]


async def test_a_transaction_failing_after_its_record_is_durable_is_completed_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, acked = await started(tmp_path)
    fill_disk(monkeypatch, 0, fail_call=1)  # the transaction record goes through, then ENOSPC
    txn = batch("txn", 2)
    with pytest.raises(TransactionInDoubtError):
        await log.transact("trainer", {StreamPartition(S, 0): 4}, txn)
    monkeypatch.undo()
    # The record is durable, so the transaction happened: the next writer completes it.
    assert await log.committed("trainer", S, 0) == 4
    assert await values(log) == acked + [a.value for a in txn]
    await log.stop()
    async with FileLog(tmp_path) as again:
        assert await values(again) == acked + [a.value for a in txn]
