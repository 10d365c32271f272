"""An ambiguous transaction commit, produced for real: the broker is paused (SIGSTOP) while the
commit is in flight, so the client's commit times out without an answer. The log must neither
abort it blindly nor repeat it blindly: it settles the transaction under the same transactional
id and looks for its records (events carry unique ids) before running it again."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from streamrl.log import Append, StreamPartition, open_log
from streamrl.log.kafka import KafkaLog
from streamrl.schemas import BatchFormed, Staleness, encode_event
from tests.faults.broker import Broker

COMMIT_TIMEOUT_S = 2.0


def batch_event(run_id: str) -> bytes:
    return encode_event(BatchFormed(run_id=run_id, batch_id="batch-000001", positions=(),
                                    sample_ids=(), policy_version=0,
                                    staleness=Staleness(min=0, max=0, mean=0.0)))


async def open_writer(broker: Broker, run_id: str) -> KafkaLog:
    log = open_log(broker.url, writer_id=f"{run_id}-trainer", commit_timeout_s=COMMIT_TIMEOUT_S,
                   request_timeout_s=5.0)
    assert isinstance(log, KafkaLog)
    await log.start()
    return log


def pause_broker_on_next_commit(log: KafkaLog, broker: Broker, then: threading.Thread) -> None:
    """The next commit is sent to a paused broker; `then` decides what happens to the broker."""
    producer = log._txn.producer
    commit = producer.commit_transaction

    async def paused_commit() -> None:
        broker.pause()
        then.start()
        await commit()

    producer.commit_transaction = paused_commit


async def run_ambiguous_commit(broker: Broker, fate: threading.Thread, run_id: str) -> None:
    events, traj = f"{run_id}.events", f"{run_id}.trajectories"
    log = await open_writer(broker, run_id)
    try:
        await log.ensure_stream(events, 1)
        await log.ensure_stream(traj, 1)
        event = batch_event(run_id)
        pause_broker_on_next_commit(log, broker, fate)
        t0 = time.monotonic()
        [position] = await log.transact("trainer", {StreamPartition(traj, 0): 8},
                                        [Append(stream=events, value=event)])
        assert time.monotonic() - t0 > COMMIT_TIMEOUT_S  # the commit really went unanswered
        fate.join()
        # Exactly one copy of the batch event, where transact said, and the position committed.
        records = await log.read_all(events)
        assert [r.value for r in records] == [event]
        assert records[0].offset == position.offset
        assert await log.committed("trainer", traj, 0) == 8
        # The writer carries on normally afterwards.
        await log.transact("trainer", {StreamPartition(traj, 0): 9},
                           [Append(stream=events, value=b"next")])
        assert [r.value for r in await log.read_all(events)] == [event, b"next"]
    finally:
        await log.stop()


async def test_a_commit_the_broker_applied_late_is_found_not_repeated(broker: Broker) -> None:
    """The broker resumes after the client gave up waiting: the commit happened."""
    resume_later = threading.Thread(target=lambda: (time.sleep(2 * COMMIT_TIMEOUT_S),
                                                    broker.resume()))
    await run_ambiguous_commit(broker, resume_later, f"amb-{uuid.uuid4().hex[:8]}")


@pytest.mark.slow
async def test_a_commit_the_broker_never_applied_is_run_again_once(broker: Broker) -> None:
    """The paused broker is killed (-9) with the commit unread, then restarted: the commit never
    happened, the new producer's initialisation aborts the transaction, and it runs again."""
    def kill_and_restart() -> None:
        time.sleep(1.0)
        broker.kill()
        broker.start()

    await run_ambiguous_commit(broker, threading.Thread(target=kill_and_restart),
                               f"amb-{uuid.uuid4().hex[:8]}")
