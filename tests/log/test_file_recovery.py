"""File log: torn tails are cut exactly and kept aside; corruption is refused, never cut.

Each case builds a small log, damages a copy of it byte by byte, and opens the copy the way a
restarted process would.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from streamrl.log import Append, LogCorruptionError
from streamrl.log.file import FileLog
from streamrl.log.file.frames import FIXED_SIZE, SegmentCorruptionError, parse_head
from streamrl.log.file.segments import list_segments, segment_name

S = "traj"


def frame_starts(data: bytes) -> list[int]:
    """Byte positions of the frames in a segment's bytes (which must be whole)."""
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += parse_head(data[pos : pos + FIXED_SIZE]).frame_len
    assert pos == len(data)
    return starts


def record(i: int, size: int = 0) -> Append:
    value = bytes((i * 7 + j) % 251 for j in range(size or 40 + 13 * i))
    return Append(stream=S, value=value, key=b"k%d" % i, headers=(("n", b"%d" % i),))


async def build(root: Path, num_records: int, **options: object) -> list[Append]:
    appends = [record(i) for i in range(num_records)]
    async with FileLog(root, **options) as log:  # type: ignore[arg-type]
        await log.ensure_stream(S, 1)
        for app in appends:  # one append each, so every frame is its own batch
            await log.append_many([app])
    return appends


async def read_all(log: FileLog, start: int = 0) -> list[bytes]:
    values, offset = [], start
    while page := await log.read(S, 0, offset):
        values += [r.value for r in page]
        offset = page[-1].offset + 1
    return values


async def test_a_torn_last_frame_is_cut_exactly_at_every_byte(tmp_path: Path) -> None:
    src = tmp_path / "src"
    appends = await build(src, 5)
    seg_rel = Path(S, "0", segment_name(0))
    data = (src / seg_rel).read_bytes()
    last = frame_starts(data)[-1]
    expected = [a.value for a in appends[:4]]
    for cut in range(last, len(data)):
        root = tmp_path / f"cut{cut}"
        shutil.copytree(src, root)
        seg = root / seg_rel
        os.truncate(seg, cut)
        async with FileLog(root) as log:
            # A reader takes the partial frame as not written yet: no error, no cut.
            assert await read_all(log) == expected
            assert await log.end_offset(S, 0) == 4
            assert seg.stat().st_size == cut
            # The writer's recovery cuts it, keeps the bytes, and appends at the right offset.
            pos = await log.append(S, b"after", key=b"k")
            assert pos.offset == 4
            assert await read_all(log) == [*expected, b"after"]
        torn = root / S / "0" / "torn" / f"{segment_name(0)}-{last}.bin"
        if cut > last:
            assert torn.read_bytes() == data[last:cut]
        else:
            assert not torn.exists()  # a clean end is not a torn tail
        assert data[:last] == seg.read_bytes()[:last]


async def test_a_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    appends = await build(tmp_path, 3)
    seg = tmp_path / S / "0" / segment_name(0)
    size = seg.stat().st_size
    append_bytes(seg, bytes(5000))  # what a power cut can leave: the size grew, the data did not
    async with FileLog(tmp_path) as log:
        assert (await log.append(S, b"next")).offset == 3
        assert await read_all(log) == [a.value for a in appends] + [b"next"]
    assert len((tmp_path / S / "0" / "torn" / f"{segment_name(0)}-{size}.bin").read_bytes()) == 5000


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def flip(path: Path, byte: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(byte)
        b = f.read(1)[0]
        f.seek(byte)
        f.write(bytes([b ^ (1 << bit)]))


async def test_a_flipped_bit_in_a_sealed_segment_is_refused_never_cut(tmp_path: Path) -> None:
    src = tmp_path / "src"
    # Small segments: the first holds records 0-2 or more, and the later ones seal it.
    appends = await build(src, 8, segment_bytes=300)
    assert list_segments(src / S / "0")[1] >= 3
    seg_rel = Path(S, "0", segment_name(0))
    data = (src / seg_rel).read_bytes()
    start = frame_starts(data)[1]
    frame_len = parse_head(data[start : start + FIXED_SIZE]).frame_len
    # Every byte of record 1: length, crc, magic/flags, offset, timestamp, lengths, key,
    # headers and payload, one bit each.
    for i in range(frame_len):
        root = tmp_path / f"flip{i}"
        shutil.copytree(src, root)
        seg = root / seg_rel
        flip(seg, start + i, i % 8)
        damaged = seg.read_bytes()
        async with FileLog(root, segment_bytes=300) as log:
            first = await log.read(S, 0, 0)
            assert [r.value for r in first] == [appends[0].value]  # the good record before it
            with pytest.raises(LogCorruptionError) as info:
                await log.read(S, 0, 1)
            err = info.value
            assert isinstance(err, SegmentCorruptionError)
            assert (Path(err.path), err.byte_offset) == (seg, start)
            assert f"at byte {start}" in str(err) and str(seg) in str(err)
            # Writing elsewhere still works and touches nothing in the damaged segment.
            assert (await log.append(S, b"more")).offset == 8
        assert seg.read_bytes() == damaged


async def test_a_flipped_bit_mid_active_segment_stops_the_writer_and_cuts_nothing(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    appends = await build(src, 4)
    seg_rel = Path(S, "0", segment_name(0))
    data = (src / seg_rel).read_bytes()
    start = frame_starts(data)[1]
    frame_len = parse_head(data[start : start + FIXED_SIZE]).frame_len
    for i in range(frame_len):
        root = tmp_path / f"flip{i}"
        shutil.copytree(src, root)
        seg = root / seg_rel
        flip(seg, start + i, (i * 5) % 8)
        async with FileLog(root) as log:
            with pytest.raises(LogCorruptionError) as info:
                await log.append(S, b"more")
            assert isinstance(info.value, SegmentCorruptionError)
            assert info.value.path == str(seg)
            assert info.value.byte_offset == start
            # Readers still get what comes before, and never the damaged record.
            values = [r.value for r in await log.read(S, 0, 0)]
            assert values == [appends[0].value]
        assert seg.stat().st_size == len(data)
        assert not (root / S / "0" / "torn").exists()


async def test_garbage_after_the_last_frame_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    await build(tmp_path, 3)
    seg = tmp_path / S / "0" / segment_name(0)
    size = seg.stat().st_size
    append_bytes(seg, b"\x07" * 100)  # an impossible frame header, and not unwritten space
    async with FileLog(tmp_path) as log:
        with pytest.raises(LogCorruptionError, match=f"at byte {size}"):
            await log.append(S, b"more")
        assert len(await log.read(S, 0, 0)) == 3
    assert seg.stat().st_size == size + 100
