"""File log specifics beyond the contract: URLs, segments and the index, fsync policies, groups."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from streamrl.log import Append, StreamNotFoundError, StreamPartition, open_log
from streamrl.log.file import FileLog
from streamrl.log.file.segments import list_segments


@pytest.mark.parametrize("form", ["file:///abs", "file://rel", "bare"])
async def test_urls_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    monkeypatch.chdir(tmp_path)
    url = {"file:///abs": f"file://{tmp_path}/a", "file://rel": "file://r/log", "bare": "b"}[form]
    log = open_log(url, fsync="never", segment_bytes=4096, writer_id="ignored")
    assert isinstance(log, FileLog) and log.segment_bytes == 4096 and log.fsync == "never"
    async with log:
        await log.ensure_stream("s", 1)
        await log.append("s", b"x")
    expected = {
        "file:///abs": tmp_path / "a",
        "file://rel": tmp_path / "r/log",
        "bare": tmp_path / "b",
    }
    assert (expected[form] / "s" / "stream.json").exists()
    with pytest.raises(ValueError, match="fsync"):
        FileLog(tmp_path, fsync="sometimes")


async def test_records_span_many_segments_and_any_offset_is_found(tmp_path: Path) -> None:
    rng = random.Random(7)
    values = [rng.randbytes(rng.choice([0, 10, 500, 20_000])) for _ in range(3000)]
    async with FileLog(tmp_path, fsync="never", segment_bytes=200_000) as log:
        await log.ensure_stream("s", 1)
        for i in range(0, len(values), 100):
            await log.append_many([Append(stream="s", value=v) for v in values[i : i + 100]])
    assert len(list_segments(tmp_path / "s" / "0")) > 10
    async with FileLog(tmp_path) as log:  # a fresh process: segment list and index from disk
        assert await log.end_offset("s", 0) == len(values)
        for offset in [0, 1, 99, 100, 2999, *rng.sample(range(3000), 200)]:
            [rec] = await log.read("s", 0, offset, max_records=1)
            assert (rec.offset, rec.value) == (offset, values[offset])
        page = await log.read("s", 0, 1234, max_records=50)
        assert [r.value for r in page] == values[1234 : 1234 + len(page)] and page
        assert await log.read("s", 0, 3000) == []


async def test_always_costs_one_fsync_per_call_and_interval_syncs_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    async with FileLog(tmp_path / "always") as log:
        await log.ensure_stream("s", 2)
        await log.append("s", b"first", partition=0)  # a new segment: file and directory
        calls.clear()
        await log.append_many(
            [Append(stream="s", value=b"v%d" % i, partition=0) for i in range(50)]
        )
        assert len(calls) == 1  # batching amortizes the fsync
    async with FileLog(tmp_path / "interval", fsync="interval", fsync_interval_ms=50) as log:
        await log.ensure_stream("s", 1)
        await log.append("s", b"x")
        calls.clear()
        await log.append("s", b"y")
        assert calls == []  # acknowledged before the fsync ...
        await asyncio.sleep(0.3)
        assert calls  # ... which follows within the interval


async def test_groups_merge_positions_and_survive_odd_names(tmp_path: Path) -> None:
    group = "trainer/run 1:ü"
    async with FileLog(tmp_path) as log:
        await log.ensure_stream("s", 2)
        await log.commit(group, {StreamPartition("s", 0): 3})
        await log.commit(group, {StreamPartition("s", 1): 4})
        await log.transact(group, {StreamPartition("s", 0): 5}, [])
        with pytest.raises(StreamNotFoundError):
            await log.commit(group, {StreamPartition("missing", 0): 1})
        with pytest.raises(ValueError):
            await log.commit(group, {StreamPartition("s", 7): 1})
    async with FileLog(tmp_path) as log:
        assert await log.committed(group, "s", 0) == 5
        assert await log.committed(group, "s", 1) == 4


async def test_stream_names_and_concurrent_creation(tmp_path: Path) -> None:
    async with FileLog(tmp_path) as a, FileLog(tmp_path) as b:
        for bad in ["", "_txn", "../x", "a/b", ".hidden"]:
            with pytest.raises(ValueError, match="stream name"):
                await a.ensure_stream(bad, 1)
        counts = await asyncio.gather(*(log.ensure_stream("s", n) for log, n in [(a, 2), (b, 3)]))
        assert counts[0] == counts[1] in (2, 3)
        assert await a.list_streams() == ["s"]
        with pytest.raises(StreamNotFoundError):
            await a.read("nope", 0, 0)


async def test_writers_with_different_segment_sizes_share_a_partition(tmp_path: Path) -> None:
    async with (
        FileLog(tmp_path, segment_bytes=500) as small,
        FileLog(tmp_path, segment_bytes=1 << 20) as big,
        FileLog(tmp_path) as reader,
    ):
        await small.ensure_stream("s", 1)
        expected = []
        for i in range(60):
            log = small if i % 3 == 0 else big  # the small one rolls, the big one must follow
            value = b"%d:" % i + bytes(i * 7)
            assert (await log.append("s", value)).offset == i
            expected.append(value)
            if i % 10 == 0:  # a reader that follows along, across the rolls
                assert await read_all(reader) == expected
        assert len(list_segments(tmp_path / "s" / "0")) > 5
        assert await read_all(reader) == expected


async def read_all(log: FileLog, stream: str = "s") -> list[bytes]:
    got, offset = [], 0
    while page := await log.read(stream, 0, offset):
        got += [r.value for r in page]
        offset = page[-1].offset + 1
    return got
