"""Kafka transactions as the trainer relies on them, against the local broker.

Exactly-once batch formation needs three things from Kafka that the contract suite cannot
provoke: aborted (and still open) transactions stay invisible to readers, a zombie incarnation of
a writer is fenced by its replacement, and a commit whose answer was lost is reported as
unknown rather than aborted.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from streamrl.log import Append, LogWriteError, StreamPartition
from streamrl.log.kafka import KafkaLog, WriterFencedError
from tests.log.helpers import OpenKafka, unique


async def values(log: KafkaLog, stream: str, timeout_s: float = 5.0) -> list[bytes]:
    return [r.value for r in await log.read(stream, 0, 0, timeout_s=timeout_s)]


async def test_aborted_and_open_transactions_are_never_read(
    open_kafka: OpenKafka, kafka_url: str
) -> None:
    reader = await open_kafka()
    s = unique("traj")
    await reader.ensure_stream(s, 1)
    # A foreign transactional producer, so the records really are in the partition's log.
    raw = AIOKafkaProducer(
        bootstrap_servers=kafka_url.removeprefix("kafka://"), transactional_id=unique("raw")
    )
    await raw.start()
    try:
        await raw.begin_transaction()
        await raw.send_and_wait(s, b"aborted-1", partition=0)
        await raw.send_and_wait(s, b"aborted-2", partition=0)
        await raw.abort_transaction()
        await raw.begin_transaction()
        await raw.send_and_wait(s, b"open", partition=0)
        # Acked but not committed: invisible, and the stable end stops before it.
        assert await values(reader, s, timeout_s=0.5) == []
        assert await reader.end_offset(s, 0) <= 3
        await raw.commit_transaction()
    finally:
        await raw.stop()
    assert await values(reader, s) == [b"open"]


async def test_a_transact_that_fails_after_sending_leaves_nothing_visible(
    open_kafka: OpenKafka,
) -> None:
    log = await open_kafka(writer_id=unique("trainer"))
    traj, events = unique("traj"), unique("events")
    await log.ensure_stream(traj, 1)
    await log.ensure_stream(events, 1)
    group = unique("trainer")
    producer = log._txn.producer

    async def offsets_fail(offsets: object, group_id: str) -> None:
        raise ConnectionResetError("injected after the records were acked")

    producer.send_offsets_to_transaction = offsets_fail
    with pytest.raises(LogWriteError):
        await log.transact(
            group, {StreamPartition(traj, 0): 4}, [Append(stream=events, value=b"x")]
        )
    assert await values(log, events, timeout_s=0.5) == []
    assert await log.committed(group, traj, 0) is None
    # The same writer goes on committing.
    del producer.send_offsets_to_transaction
    await log.transact(group, {StreamPartition(traj, 0): 4}, [Append(stream=events, value=b"y")])
    assert await values(log, events) == [b"y"]
    assert await log.committed(group, traj, 0) == 4


async def test_a_restarted_writer_fences_its_zombie(open_kafka: OpenKafka) -> None:
    writer_id = unique("trainer")
    zombie = await open_kafka(writer_id=writer_id)
    reader = await open_kafka()
    traj, events = unique("traj"), unique("events")
    await zombie.ensure_stream(traj, 1)
    await zombie.ensure_stream(events, 1)
    group = unique("trainer")
    sp = StreamPartition(traj, 0)

    # The zombie is mid-transaction (records acked, commit not sent) when its replacement starts.
    paused, resume = asyncio.Event(), asyncio.Event()
    producer = zombie._txn.producer
    send_offsets = producer.send_offsets_to_transaction

    async def pause_then_send_offsets(offsets: object, group_id: str) -> None:
        paused.set()
        await resume.wait()
        await send_offsets(offsets, group_id)

    producer.send_offsets_to_transaction = pause_then_send_offsets
    task = asyncio.create_task(zombie.transact(group, {sp: 1}, [Append(stream=events, value=b"z")]))
    await asyncio.wait_for(paused.wait(), 10)
    assert await values(reader, events, timeout_s=0.3) == []

    replacement = await open_kafka(writer_id=writer_id)  # fences the zombie, aborts its txn
    resume.set()
    with pytest.raises(WriterFencedError) as info:
        await task
    assert info.value.retriable is False

    await replacement.transact(group, {sp: 2}, [Append(stream=events, value=b"r")])
    assert await values(reader, events) == [b"r"]
    assert await reader.committed(group, traj, 0) == 2
    # The zombie stays fenced without fencing the replacement back.
    with pytest.raises(WriterFencedError):
        await zombie.transact(group, {sp: 3}, [Append(stream=events, value=b"z2")])
    await replacement.transact(group, {sp: 3}, [Append(stream=events, value=b"r2")])
    assert await values(reader, events) == [b"r", b"r2"]


async def test_an_unanswered_commit_is_settled_and_found_not_aborted_or_repeated(
    open_kafka: OpenKafka,
) -> None:
    log = await open_kafka(writer_id=unique("trainer"), commit_timeout_s=1.0)
    traj, events = unique("traj"), unique("events")
    await log.ensure_stream(traj, 1)
    await log.ensure_stream(events, 1)
    group = unique("trainer")
    producer = log._txn.producer
    commit, aborts = producer.commit_transaction, []

    async def commit_then_lose_the_answer() -> None:
        await commit()
        await asyncio.Event().wait()

    async def spy_abort() -> None:
        aborts.append(True)

    producer.commit_transaction = commit_then_lose_the_answer
    producer.abort_transaction = spy_abort
    [position] = await log.transact(
        group, {StreamPartition(traj, 0): 5}, [Append(stream=events, value=b"b1")]
    )
    assert aborts == []
    # It did commit: the log found it (de-duplicated by content) instead of running it again.
    assert await values(log, events) == [b"b1"]
    assert position.offset == 0
    assert await log.committed(group, traj, 0) == 5
    # The writer carries on with a fresh producer under the same transactional id.
    await log.transact(group, {StreamPartition(traj, 0): 6}, [Append(stream=events, value=b"b2")])
    assert await values(log, events) == [b"b1", b"b2"]
