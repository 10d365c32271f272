"""Shared by the log tests: unique stream names, and the type of the `open_kafka` fixture
(conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from streamrl.log.kafka import KafkaLog

MiB = 1024 * 1024
OpenKafka = Callable[..., Awaitable[KafkaLog]]


def unique(name: str) -> str:
    """A stream name no other test (or earlier run on the shared broker) has used."""
    return f"t{uuid.uuid4().hex[:10]}.{name}"
