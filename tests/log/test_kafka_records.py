"""Records through the Kafka log: large payloads, cheap sequential reads, transaction gaps.

Runs against the local broker (scripts/kafka.sh start).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from streamrl.log import Append, LogClosedError, StreamPartition
from tests.log.helpers import MiB, OpenKafka, unique


async def test_8mb_records_round_trip_plain_and_in_a_transaction(open_kafka: OpenKafka) -> None:
    writer = await open_kafka(writer_id=unique("producer"))
    reader = await open_kafka()
    s = unique("traj")
    await writer.ensure_stream(s, 1)
    # Random bytes: nothing along the way may compress or dedupe them into passing.
    big = [os.urandom(8 * MiB) for _ in range(3)]
    positions = await writer.append_many([Append(stream=s, value=v) for v in big[:2]])
    [in_txn] = await writer.transact(unique("group"), {}, [Append(stream=s, value=big[2])])
    got: list[bytes] = []
    offset = positions[0].offset
    while len(got) < 3:
        page = await reader.read(s, 0, offset, timeout_s=10)
        assert page
        got += [r.value for r in page]
        offset = page[-1].offset + 1
    assert got == big
    assert in_txn.offset > positions[-1].offset


async def test_sequential_reads_do_not_seek_again(open_kafka: OpenKafka) -> None:
    log = await open_kafka()
    s = unique("traj")
    await log.ensure_stream(s, 1)
    await log.append_many([Append(stream=s, value=b"r%d" % i) for i in range(30)])
    await log.read(s, 0, 0, max_records=1, timeout_s=5)
    [reader] = log._readers._readers.values()
    seeks: list[int] = []
    seek = reader.consumer.seek
    reader.consumer.seek = lambda tp, offset: (seeks.append(offset), seek(tp, offset))[1]
    offset, seen = 1, 1
    while seen < 30:
        page = await log.read(s, 0, offset, max_records=4, timeout_s=5)
        seen += len(page)
        offset = page[-1].offset + 1
    assert seeks == []  # each page continued where the consumer already was
    [again] = await log.read(s, 0, 3, max_records=1, timeout_s=5)
    assert (again.value, seeks) == (b"r3", [3])


async def test_resuming_after_a_transaction_marker_neither_waits_nor_skips(
    open_kafka: OpenKafka,
) -> None:
    log = await open_kafka(writer_id=unique("trainer"))
    s = unique("events")
    await log.ensure_stream(s, 1)
    [pos] = await log.transact(unique("group"), {}, [Append(stream=s, value=b"batch-1")])
    [rec] = await log.read(s, 0, pos.offset, timeout_s=5)
    # The commit marker took the next offset, so the stable end is past the resume point...
    assert await log.end_offset(s, 0) == rec.offset + 2
    t0 = time.monotonic()
    assert await log.read(s, 0, rec.offset + 1) == []
    assert time.monotonic() - t0 < 2  # ...but a no-wait read sees there is nothing to wait for.
    later = await log.append(s, b"plain")
    assert [r.value for r in await log.read(s, 0, rec.offset + 1, timeout_s=5)] == [b"plain"]
    assert later.offset == rec.offset + 2


async def test_a_fresh_reader_with_no_wait_still_returns_committed_records(
    open_kafka: OpenKafka,
) -> None:
    writer, reader = await open_kafka(), await open_kafka()
    s = unique("traj")
    await writer.ensure_stream(s, 1)
    await writer.append_many([Append(stream=s, value=b"a"), Append(stream=s, value=b"b")])
    assert [r.value for r in await reader.read(s, 0, 0)] == [b"a", b"b"]


async def test_offsets_outside_the_log_are_refused(open_kafka: OpenKafka) -> None:
    log = await open_kafka()
    s = unique("traj")
    await log.ensure_stream(s, 1)
    await log.append(s, b"only")
    with pytest.raises(ValueError, match="outside"):
        await log.read(s, 0, 50, timeout_s=5)
    with pytest.raises(ValueError, match="out of range"):
        await log.read(s, 1, 0)
    # The reader recovers for a valid offset.
    assert [r.value for r in await log.read(s, 0, 0, timeout_s=5)] == [b"only"]


async def test_group_positions_are_shared_with_every_instance(open_kafka: OpenKafka) -> None:
    a, b = await open_kafka(), await open_kafka()
    s = unique("traj")
    await a.ensure_stream(s, 3)
    group = unique("audit")
    await a.commit(group, {StreamPartition(s, 0): 10, StreamPartition(s, 2): 4})
    assert [await b.committed(group, s, p) for p in range(3)] == [10, None, 4]
    await b.commit(group, {StreamPartition(s, 0): 11})
    assert await a.committed(group, s, 0) == 11


async def test_stop_ends_a_waiting_read_with_log_closed(open_kafka: OpenKafka) -> None:
    log = await open_kafka()
    s = unique("idle")
    await log.ensure_stream(s, 1)
    task = asyncio.create_task(log.read(s, 0, 0, timeout_s=30))
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    await log.stop()
    with pytest.raises(LogClosedError):
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - t0 < 10
