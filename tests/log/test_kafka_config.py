"""The Kafka log's clients really run with the safe settings (aiokafka's defaults are not safe).

Checks the values inside the started aiokafka objects, not our config dict, so a renamed or
ignored keyword would show up here. Runs against the local broker (scripts/kafka.sh start).
"""

from __future__ import annotations

import gc

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.consumer.fetcher import READ_COMMITTED, OffsetResetStrategy

from streamrl.log import LogClosedError, LogWriteError, open_log
from tests.log.helpers import MiB, OpenKafka, unique


async def test_producers_wait_for_all_replicas_and_never_duplicate(open_kafka: OpenKafka) -> None:
    log = await open_kafka(writer_id=unique("writer"))
    for producer in (log._producer, log._txn.producer):
        assert producer is not None
        assert producer._sender._acks == -1  # acks=all
        assert producer._txn_manager is not None  # idempotence: producer id + sequence numbers
        assert producer._max_request_size >= 64 * MiB
        assert producer._message_accumulator._batch_size >= 64 * MiB
        assert producer._compression_type is None  # Arrow payloads: off unless asked for
    assert log._txn.producer._txn_manager.transactional_id == log.config.writer_id
    assert log._producer._txn_manager.transactional_id is None


async def test_compression_is_configurable(open_kafka: OpenKafka) -> None:
    log = await open_kafka(compression="gzip")
    assert log._producer._compression_type == "gzip"


async def test_readers_see_only_committed_data_and_never_move_positions(
    open_kafka: OpenKafka,
) -> None:
    log = await open_kafka()
    s = unique("traj")
    await log.ensure_stream(s, 1)
    await log.read(s, 0, 0)
    [reader] = log._readers._readers.values()
    consumer = reader.consumer
    assert consumer._group_id is None  # no membership, no rebalances
    assert consumer._enable_auto_commit is False
    fetcher = consumer._fetcher
    assert fetcher._isolation_level == READ_COMMITTED
    assert fetcher._default_reset_strategy == OffsetResetStrategy.NONE
    assert fetcher._max_partition_fetch_bytes >= 64 * MiB
    assert fetcher._fetch_max_bytes >= 64 * MiB


async def test_streams_are_created_for_large_records(open_kafka: OpenKafka, kafka_url: str) -> None:
    log = await open_kafka()
    s = unique("traj")
    await log.ensure_stream(s, 2)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_url.removeprefix("kafka://"))
    await admin.start()
    try:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, s)])
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in resp.resources[0][4]}
    assert int(configs["max.message.bytes"]) > 64 * MiB


async def test_unknown_options_are_refused_at_open(kafka_url: str) -> None:
    with pytest.raises(ValueError, match="writer_idd"):
        open_log(kafka_url, writer_idd="typo")


async def test_a_record_over_the_cap_is_refused_and_not_retried(open_kafka: OpenKafka) -> None:
    log = await open_kafka(max_record_bytes=1 * MiB)
    s = unique("traj")
    await log.ensure_stream(s, 1)
    with pytest.raises(LogWriteError) as info:
        await log.append(s, b"x" * (2 * MiB))
    assert info.value.retriable is False
    assert await log.end_offset(s, 0) == 0


async def test_transact_without_writer_id_says_what_is_missing(open_kafka: OpenKafka) -> None:
    log = await open_kafka()
    with pytest.raises(ValueError, match="writer_id"):
        await log.transact(unique("group"), {}, [])


async def test_a_started_log_dropped_without_stop_warns(kafka_url: str) -> None:
    log = open_log(kafka_url)
    await log.start()
    await log._close_clients()  # release the sockets; only the forgotten stop() remains
    with pytest.warns(ResourceWarning, match="unstopped KafkaLog"):
        del log
        gc.collect()


async def test_start_is_idempotent_and_a_stopped_log_stays_stopped(kafka_url: str) -> None:
    log = open_log(kafka_url, writer_id=unique("writer"))
    await log.start()
    await log.start()
    await log.stop()
    with pytest.raises(LogClosedError):
        await log.start()
    with pytest.raises(LogClosedError):
        await log.read(unique("any"), 0, 0)
