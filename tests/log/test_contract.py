"""The log contract: the same tests against every backend (memory, file, Kafka).

Each test gets a `LogFactory`: `await make()` opens a log on the backend's storage, and calling it
again opens a second instance on the *same* storage, which is how a restart or a second process
sees the log.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from streamrl.log import (
    Append,
    Log,
    LogClosedError,
    StreamNotFoundError,
    StreamPartition,
    open_log,
)
from streamrl.log.memory import MemoryLog, MemoryStore
from tests.log.helpers import unique

LogFactory = Callable[[], Awaitable[Log]]


@pytest.fixture(params=["memory", "file", "kafka"])
async def make(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[LogFactory]:
    opened: list[Log] = []
    if request.param == "memory":
        store = MemoryStore()

        def build() -> Log:
            return MemoryLog(store)
    elif request.param == "file":

        def build() -> Log:
            return open_log(f"file://{tmp_path / 'log'}")
    else:
        url = request.getfixturevalue("kafka_url")

        def build() -> Log:
            return open_log(url, writer_id=f"contract-{uuid.uuid4().hex[:8]}")

    async def factory() -> Log:
        log = build()
        await log.start()
        opened.append(log)
        return log

    yield factory
    for log in opened:
        await log.stop()


async def test_append_then_read_returns_the_record_at_its_position(make: LogFactory) -> None:
    log = await make()
    s = unique("events")
    await log.ensure_stream(s, 1)
    pos = await log.append(s, b"hello", key=b"k1", headers=(("kind", b"greeting"),))
    assert (pos.stream, pos.partition) == (s, 0)
    [rec] = await log.read(s, 0, pos.offset, timeout_s=5)
    assert rec.position == pos
    assert (rec.value, rec.key, rec.header("kind")) == (b"hello", b"k1", b"greeting")
    assert rec.timestamp_ms > 0


async def test_offsets_increase_in_append_order_and_resume_point_loses_nothing(
    make: LogFactory,
) -> None:
    log = await make()
    s = unique("traj")
    await log.ensure_stream(s, 1)
    positions = [await log.append(s, f"r{i}".encode()) for i in range(5)]
    positions += await log.append_many(
        [Append(stream=s, value=f"r{i}".encode()) for i in range(5, 30)]
    )
    offsets = [p.offset for p in positions]
    assert offsets == sorted(offsets) and len(set(offsets)) == 30
    # Read in small pages, always resuming after the last record seen.
    seen: list[bytes] = []
    offset = 0
    while len(seen) < 30:
        page = await log.read(s, 0, offset, max_records=7, timeout_s=5)
        assert 0 < len(page) <= 7
        seen += [r.value for r in page]
        offset = page[-1].offset + 1
    assert seen == [f"r{i}".encode() for i in range(30)]
    assert await log.end_offset(s, 0) >= positions[-1].offset + 1
    assert await log.read(s, 0, await log.end_offset(s, 0)) == []


async def test_streams_keep_their_partition_count(make: LogFactory) -> None:
    log = await make()
    s = unique("prompts")
    assert await log.ensure_stream(s, 4) == 4
    assert await log.ensure_stream(s, 2) == 4
    assert await log.num_partitions(s) == 4
    prefix = s.split(".")[0]
    assert s in await log.list_streams(prefix)
    with pytest.raises(StreamNotFoundError):
        await log.num_partitions(unique("missing"))


async def test_keys_pick_stable_partitions_and_explicit_partitions_win(make: LogFactory) -> None:
    log = await make()
    s = unique("prompts")
    await log.ensure_stream(s, 4)
    a = [await log.append(s, b"x", key=b"prompt-17") for _ in range(3)]
    assert len({p.partition for p in a}) == 1
    p3 = await log.append(s, b"y", key=b"prompt-17", partition=3)
    assert p3.partition == 3
    [rec] = await log.read(s, 3, p3.offset, timeout_s=5)
    assert rec.value == b"y"


async def test_read_waits_for_a_concurrent_append(make: LogFactory) -> None:
    log = await make()
    s = unique("weights")
    await log.ensure_stream(s, 1)
    start = await log.end_offset(s, 0)

    async def late_append() -> None:
        await asyncio.sleep(0.3)
        await log.append(s, b"v1")

    task = asyncio.create_task(late_append())
    t0 = time.monotonic()
    records = await log.read(s, 0, start, timeout_s=20)
    await task
    assert [r.value for r in records] == [b"v1"]
    assert time.monotonic() - t0 < 15


async def test_read_times_out_empty_on_an_idle_partition(make: LogFactory) -> None:
    log = await make()
    s = unique("idle")
    await log.ensure_stream(s, 1)
    t0 = time.monotonic()
    assert await log.read(s, 0, 0, timeout_s=0.3) == []
    assert time.monotonic() - t0 >= 0.25


async def test_a_second_instance_sees_what_the_first_wrote(make: LogFactory) -> None:
    writer = await make()
    s = unique("traj")
    await writer.ensure_stream(s, 2)
    pos = await writer.append(s, b"shared", partition=1)
    reader = await make()
    assert await reader.num_partitions(s) == 2
    [rec] = await reader.read(s, 1, pos.offset, timeout_s=5)
    assert rec.value == b"shared"


async def test_committed_positions_are_durable_across_restart(make: LogFactory) -> None:
    log = await make()
    s = unique("traj")
    await log.ensure_stream(s, 2)
    group = unique("trainer")
    assert await log.committed(group, s, 0) is None
    await log.commit(group, {StreamPartition(s, 0): 7, StreamPartition(s, 1): 3})
    await log.stop()
    again = await make()
    assert await again.committed(group, s, 0) == 7
    assert await again.committed(group, s, 1) == 3
    assert await again.committed(unique("other"), s, 0) is None


async def test_transact_appends_and_commits_together(make: LogFactory) -> None:
    log = await make()
    traj, events = unique("traj"), unique("events")
    await log.ensure_stream(traj, 1)
    await log.ensure_stream(events, 1)
    consumed = await log.append_many([Append(stream=traj, value=b"s%d" % i) for i in range(4)])
    group = unique("trainer")
    next_offset = consumed[-1].offset + 1
    positions = await log.transact(
        group,
        {StreamPartition(traj, 0): next_offset},
        [Append(stream=events, value=b"BatchFormed"), Append(stream=events, value=b"TrainStep")],
    )
    assert [p.stream for p in positions] == [events, events]
    records = await log.read(events, 0, positions[0].offset, timeout_s=5)
    assert [r.value for r in records] == [b"BatchFormed", b"TrainStep"]
    assert await log.committed(group, traj, 0) == next_offset
    await log.stop()
    again = await make()
    assert await again.committed(group, traj, 0) == next_offset
    records = await again.read(events, 0, positions[0].offset, timeout_s=5)
    assert [r.value for r in records] == [b"BatchFormed", b"TrainStep"]


async def test_transact_commits_every_partition_together_or_none(make: LogFactory) -> None:
    """The trainer's step over a partitioned trajectories stream: one transaction moves the
    positions of several partitions with its appends, and a failed one moves none of them."""
    log = await make()
    traj, events = unique("traj"), unique("events")
    await log.ensure_stream(traj, 2)
    await log.ensure_stream(events, 1)
    group = unique("trainer")
    p0, p1 = StreamPartition(traj, 0), StreamPartition(traj, 1)
    await log.transact(group, {p0: 3, p1: 5}, [Append(stream=events, value=b"batch-1")])
    with pytest.raises((StreamNotFoundError, ValueError)):
        await log.transact(group, {p0: 4, p1: 9}, [Append(stream=unique("missing"), value=b"x")])
    await log.stop()
    again = await make()
    assert [await again.committed(group, traj, p) for p in (0, 1)] == [3, 5]
    assert [r.value for r in await again.read(events, 0, 0, timeout_s=5)] == [b"batch-1"]


async def test_a_failed_transact_leaves_nothing_behind(make: LogFactory) -> None:
    log = await make()
    events = unique("events")
    await log.ensure_stream(events, 1)
    group = unique("trainer")
    end_before = await log.end_offset(events, 0)
    with pytest.raises((StreamNotFoundError, ValueError)):
        await log.transact(
            group,
            {StreamPartition(events, 0): 1},
            [Append(stream=events, value=b"a"), Append(stream=unique("missing"), value=b"b")],
        )
    assert await log.committed(group, events, 0) is None
    assert await log.read(events, 0, end_before, timeout_s=0.5) == []
    # The log still works after the failure.
    pos = await log.transact(group, {}, [Append(stream=events, value=b"ok")])
    [rec] = await log.read(events, 0, pos[0].offset, timeout_s=5)
    assert rec.value == b"ok"


async def test_records_of_several_megabytes_round_trip(make: LogFactory) -> None:
    log = await make()
    s = unique("traj")
    await log.ensure_stream(s, 1)
    big = bytes(range(256)) * (6 * 4096)  # 6 MiB, a long MoE trajectory batch
    pos = await log.append(s, big)
    [rec] = await log.read(s, 0, pos.offset, timeout_s=10)
    assert rec.value == big


async def test_follow_yields_records_as_they_arrive(make: LogFactory) -> None:
    log = await make()
    s = unique("events")
    await log.ensure_stream(s, 1)
    await log.append(s, b"first")
    got: list[bytes] = []

    async def consume() -> None:
        async for rec in log.follow(s, 0, 0, poll_s=0.1):
            got.append(rec.value)
            if len(got) == 2:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    await log.append(s, b"second")
    await asyncio.wait_for(task, 20)
    assert got == [b"first", b"second"]


async def test_stop_is_idempotent_and_a_stopped_log_refuses_work(make: LogFactory) -> None:
    log = await make()
    s = unique("events")
    await log.ensure_stream(s, 1)
    await log.stop()
    await log.stop()
    with pytest.raises(LogClosedError):
        await log.append(s, b"late")
