"""A run's Kafka topics keep every record: created with infinite retention, an existing topic that
deletes records refused (durable) or warned about, and deleted history named by its first missing
offset in the log, `streamrl inspect` and `streamrl audit` (real local broker)."""

from __future__ import annotations

import logging
import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from streamrl.log import HistoryDeletedError, open_log
from streamrl.log.kafka.options import FiniteRetention
from streamrl.streams import RunStreams
from tests.helpers import streamrl
from tests.log.helpers import OpenKafka


def bootstrap(kafka_url: str) -> str:
    return kafka_url.removeprefix("kafka://")


async def admin(kafka_url: str) -> AIOKafkaAdminClient:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap(kafka_url))
    await client.start()
    return client


async def test_streams_are_created_to_keep_every_record(open_kafka: OpenKafka) -> None:
    log = await open_kafka()
    stream = f"ret-{uuid.uuid4().hex[:8]}.events"
    await log.ensure_stream(stream, 1)
    assert log._admin is not None
    configs = await log._admin.retention_configs(stream)
    assert configs == {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
    assert await log.retention(stream) == "forever"
    assert await log.start_offset(stream, 0) == 0


async def test_finite_retention_is_refused_in_durable_mode_and_allowed_when_asked(
        kafka_url: str, open_kafka: OpenKafka) -> None:
    with pytest.raises(FiniteRetention, match=r"retention.ms=3600000 \(records older than 1 "
                                              r"hours are deleted\).*durable=false"):
        open_log(f"{kafka_url}?retention_ms=3600000")
    log = await open_kafka(retention_ms=3600000, durable=False)
    stream = f"ret-{uuid.uuid4().hex[:8]}.events"
    await log.ensure_stream(stream, 1)
    assert await log.retention(stream) == "retention.ms=3600000"


async def test_an_existing_topic_that_deletes_records_is_named_at_start(
        kafka_url: str, open_kafka: OpenKafka, caplog: pytest.LogCaptureFixture) -> None:
    stream = f"ret-{uuid.uuid4().hex[:8]}.trajectories"
    client = await admin(kafka_url)
    try:  # as the broker's defaults (7 days) or an operator would make it
        await client.create_topics([NewTopic(stream, 1, 1, topic_configs={
            "retention.ms": "604800000", "cleanup.policy": "compact,delete"})])
    finally:
        await client.close()
    durable = await open_kafka()
    with pytest.raises(FiniteRetention) as refused:
        await durable.ensure_stream(stream, 1)
    message = str(refused.value)
    assert f"existing stream {stream!r}" in message
    assert "retention.ms=604800000 (records older than 7 days are deleted)" in message
    assert "cleanup.policy=compact,delete" in message and "retention.ms=-1" in message
    relaxed = await open_kafka(durable=False)
    with caplog.at_level(logging.WARNING):
        assert await relaxed.ensure_stream(stream, 1) == 1
    assert "retention.ms=604800000" in caplog.text


async def test_deleted_history_is_named_by_inspect_and_audit(
        kafka_url: str, open_kafka: OpenKafka, tmp_path) -> None:
    run_id = f"ret-{uuid.uuid4().hex[:8]}"
    made = streamrl("demo", "--run", run_id, "--log", kafka_url, "--prompts", "8", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    events = RunStreams(run_id).events
    client = await admin(kafka_url)
    try:
        await client.delete_records({TopicPartition(events, 0): RecordsToDelete(3)})
    finally:
        await client.close()

    log = await open_kafka()
    assert await log.start_offset(events, 0) == 3
    with pytest.raises(HistoryDeletedError) as deleted:
        await log.read_all(events)
    assert (deleted.value.first_missing, deleted.value.first_held) == (0, 3)
    assert f"{events}[0] no longer holds offsets 0..2" in str(deleted.value)

    shown = streamrl("inspect", run_id, "--log", kafka_url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    row = next(line for line in shown.stdout.splitlines() if line.strip("│ ").startswith("events"))
    assert "forever" in row and "history deleted" in row and "│ 3 " in row.replace("  ", " ")

    audited = streamrl("audit", run_id, "--log", kafka_url, cwd=tmp_path)
    assert audited.returncode == 2
    assert "history deleted" in audited.stdout and "offsets 0..2" in audited.stdout
    assert "Traceback" not in audited.stdout + audited.stderr
