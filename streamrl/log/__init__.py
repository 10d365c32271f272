"""The event log: one interface (`Log`), three backends picked by URL.

    memory://                  in-process, for unit tests
    file:///abs/dir, ./dir     the embedded default: segment files on local disk
    kafka://host:9092[,host2]  Apache Kafka through aiokafka

`open_log(url)` builds the backend; call `start()` (or use `async with`) before using it.
"""

from __future__ import annotations

import importlib
from typing import Any

from streamrl.log.base import (
    MARKER_HEADER,
    MAX_METADATA_BYTES,
    Append,
    Committed,
    Headers,
    HistoryDeletedError,
    Log,
    LogClosedError,
    LogCorruptionError,
    LogError,
    LogWriteError,
    Position,
    Record,
    StreamNotFoundError,
    StreamPartition,
    choose_partition,
)

# scheme -> "module:Class"; each class has `from_url(url, **options)`.
BACKENDS: dict[str, str] = {
    "memory": "streamrl.log.memory:MemoryLog",
    "file": "streamrl.log.file:FileLog",
    "kafka": "streamrl.log.kafka:KafkaLog",
}


def open_log(url: str, **options: Any) -> Log:
    """Build the log backend named by `url` (not started yet). A bare path means the file log."""
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    try:
        target = BACKENDS[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise ValueError(f"unknown log URL {url!r}: expected one of {known} or a path") from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_url(url, **options)


__all__ = [
    "BACKENDS",
    "MARKER_HEADER",
    "MAX_METADATA_BYTES",
    "Append",
    "Committed",
    "Headers",
    "HistoryDeletedError",
    "Log",
    "LogClosedError",
    "LogCorruptionError",
    "LogError",
    "LogWriteError",
    "Position",
    "Record",
    "StreamNotFoundError",
    "StreamPartition",
    "choose_partition",
    "open_log",
]
