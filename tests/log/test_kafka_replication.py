"""How many copies a run's Kafka topics keep: replication factor min(3, brokers) and
min.insync.replicas min(2, RF) unless set, and the durability guard refusing a cluster stream
that would keep (or acknowledge) one copy, naming the setting and the fix. The real three-broker
cluster is exercised in tests/faults/test_kafka_cluster.py."""

from __future__ import annotations

import logging
import uuid

import pytest

from streamrl.log.kafka.config import KafkaLogConfig
from streamrl.log.kafka.options import UnreplicatedStream
from tests.log.helpers import OpenKafka

URL = "kafka://127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"


@pytest.mark.parametrize(("num_brokers", "expected"), [(1, (1, 1)), (2, (2, 2)), (3, (3, 2)),
                                                        (5, (3, 2))])
def test_streams_get_min_3_copies_and_need_2_in_sync_by_default(
        num_brokers: int, expected: tuple[int, int]) -> None:
    assert KafkaLogConfig.from_url(URL).replication(num_brokers) == expected


def test_one_copy_on_a_cluster_is_refused_in_durable_mode_naming_the_fix() -> None:
    config = KafkaLogConfig.from_url(URL + "?replication_factor=1")
    assert config.replication(1) == (1, 1)  # one broker: one copy is all there is
    with pytest.raises(UnreplicatedStream, match=r"replication_factor=1 on a cluster of 3 "
                                                 r"brokers.*leave replication_factor unset"):
        config.replication(3)


def test_one_in_sync_copy_on_a_cluster_is_refused_in_durable_mode() -> None:
    config = KafkaLogConfig.from_url(URL + "?min_insync_replicas=1")
    with pytest.raises(UnreplicatedStream, match=r"min.insync.replicas=1 with replication "
                                                 r"factor 3.*set it to 2"):
        config.replication(3)


def test_durable_false_lets_one_copy_through_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    config = KafkaLogConfig.from_url(URL + "?replication_factor=1&durable=false")
    with caplog.at_level(logging.WARNING):
        assert config.replication(3) == (1, 1)
    assert "replication_factor=1 on a cluster of 3 brokers" in caplog.text


@pytest.mark.parametrize(("query", "error"), [
    ("?replication_factor=2&min_insync_replicas=3", "min_insync_replicas=3 > replication_factor=2"),
    ("?replication_factor=0", "replication_factor must be >= 1"),
    ("?min_insync_replicas=0", "min_insync_replicas must be >= 1"),
])
def test_impossible_replication_settings_are_refused_at_load(query: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        KafkaLogConfig.from_url(URL + query)


def test_min_insync_replicas_in_topic_configs_points_to_the_log_option() -> None:
    with pytest.raises(ValueError, match="use the log option min_insync_replicas"):
        KafkaLogConfig(bootstrap="127.0.0.1:9092", topic_configs={"min.insync.replicas": "1"})


async def test_a_stream_on_the_single_broker_has_one_copy(open_kafka: OpenKafka) -> None:
    log = await open_kafka()
    stream = f"repl-{uuid.uuid4().hex[:8]}.events"
    await log.ensure_stream(stream, 1)
    assert log._admin is not None
    assert await log._admin.num_brokers() == 1
    assert await log._admin.replication_of(stream) == (1, 1)
