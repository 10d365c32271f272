"""Fixtures of the log tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streamrl.log import open_log
from streamrl.log.kafka import KafkaLog
from tests.log.helpers import OpenKafka


@pytest.fixture
async def open_kafka(kafka_url: str) -> AsyncIterator[OpenKafka]:
    """`await open_kafka(**options)` opens and starts a KafkaLog; all are stopped afterwards."""
    opened: list[KafkaLog] = []

    async def factory(**options: object) -> KafkaLog:
        log = open_log(kafka_url, **options)
        assert isinstance(log, KafkaLog)
        await log.start()
        opened.append(log)
        return log

    yield factory
    for log in opened:
        await log.stop()
