"""Reading Kafka partitions for `KafkaLog.read`: one positioned consumer per partition.

Each `PartitionReader` owns a read_committed consumer assigned to exactly one partition (manual
assignment, no group). It remembers where the caller will resume, so sequential reads
(`offset = last.offset + 1`) neither seek nor drop what the consumer has prefetched; only a jump
elsewhere seeks. A `ReaderPool` keeps the most recently used readers open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiokafka.errors as kerr
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streamrl.log.base import HistoryDeletedError, LogClosedError, LogError, Record
from streamrl.log.kafka.config import KafkaLogConfig

T = TypeVar("T")
RETRY_S = 0.5
logger = logging.getLogger(__name__)

# How long a read with timeout_s=0 may wait for records the broker says are committed but this
# consumer has not fetched yet (one fetch round trip; seconds only for records of many MiB).
FILL_WAIT_S = 5.0
POLL_STEP_S = 0.05
# How long closing a reader may take: its in-flight fetch ends within fetch_max_wait_ms.
READER_STOP_S = 2.0


def to_record(msg: ConsumerRecord) -> Record:
    return Record(
        stream=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        value=msg.value if msg.value is not None else b"",
        key=msg.key,
        headers=tuple((k, v if v is not None else b"") for k, v in msg.headers),
        timestamp_ms=msg.timestamp,
    )


def read_error(exc: Exception, tp: TopicPartition) -> LogError:
    if isinstance(exc, kerr.TopicAuthorizationFailedError):
        return LogError(f"not authorized to read {tp.topic}[{tp.partition}]: Kafka ACLs deny "
                        "this principal Read on the stream; see docs/kafka-security.md")
    err = LogError(f"reading {tp.topic}[{tp.partition}] failed: {type(exc).__name__}: {exc}")
    # A timeout means the broker did not answer (down, restarting): asking again can succeed.
    err.retriable = isinstance(exc, kerr.KafkaTimeoutError) or bool(getattr(exc, "retriable",
                                                                            False))
    return err


async def retrying(config: KafkaLogConfig, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, again after retriable failures (broker down or restarting, leader moving) for up
    to `config.unavailable_s`; then the last error. A reader outlives a broker restart this way
    instead of every caller (trainer, producers, supervisor, monitor) handling it."""
    deadline: float | None = None
    while True:
        try:
            return await call()
        except LogError as exc:
            if not exc.retriable or isinstance(exc, LogClosedError):
                raise
            now = time.monotonic()
            deadline = deadline or now + config.unavailable_s
            if now >= deadline:
                raise
            logger.warning("%s: %s; retrying", what, exc)
            await asyncio.sleep(RETRY_S)


class PartitionReader:
    """A consumer assigned to one partition. Not for concurrent use (`ReaderPool` serialises)."""

    def __init__(self, config: KafkaLogConfig, stream: str, partition: int) -> None:
        self.config = config
        self.tp = TopicPartition(stream, partition)
        self._consumer = AIOKafkaConsumer(**config.consumer_settings())
        # The offset a caller continuing from the last read would pass; the consumer is already
        # positioned for it (at it, or past transaction markers and aborted records after it).
        self._resume_at: int | None = None
        self.lock = asyncio.Lock()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self._consumer

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign([self.tp])

    async def stop(self) -> None:
        # Bounded: over TLS, uvloop's close of a connection whose prefetch answer is still
        # arriving waits up to 30 s for the broker's close_notify (MagicStack/uvloop#471). By
        # then the consumer has closed every connection on its side; only that wait is cut.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._consumer.stop(), READER_STOP_S)

    async def end_offset(self) -> int:
        """The last stable offset: read_committed makes ListOffsets answer with it."""
        return await retrying(self.config, f"end offset of {self.tp.topic}", self._end_offset)

    async def _end_offset(self) -> int:
        try:
            return (await self._consumer.end_offsets([self.tp]))[self.tp]
        except kerr.KafkaError as exc:
            raise read_error(exc, self.tp) from exc

    async def start_offset(self) -> int:
        """The log start offset: the oldest record retention (or delete_records) left."""
        return await retrying(self.config, f"start offset of {self.tp.topic}", self._start_offset)

    async def _start_offset(self) -> int:
        try:
            return (await self._consumer.beginning_offsets([self.tp]))[self.tp]
        except kerr.KafkaError as exc:
            raise read_error(exc, self.tp) from exc

    async def read(self, offset: int, max_records: int, timeout_s: float) -> list[Record]:
        return await retrying(self.config, f"reading {self.tp.topic}[{self.tp.partition}]",
                              lambda: self._read(offset, max_records, timeout_s))

    async def _read(self, offset: int, max_records: int, timeout_s: float) -> list[Record]:
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if offset != self._resume_at:
            self._consumer.seek(self.tp, offset)
            self._resume_at = offset
        try:
            msgs = await self._fetch(max_records, timeout_s)
            if not msgs and timeout_s <= 0:
                msgs = await self._fill(offset, max_records)
        except kerr.OffsetOutOfRangeError:
            self._resume_at = None
            if offset < (first_held := await self._start_offset()):
                raise HistoryDeletedError(self.tp.topic, self.tp.partition, offset,
                                          first_held) from None
            raise ValueError(
                f"offset {offset} is outside {self.tp.topic}[{self.tp.partition}] (before its "
                "first retained record or past its end)"
            ) from None
        except kerr.KafkaError as exc:
            self._resume_at = None
            raise read_error(exc, self.tp) from exc
        except kerr.ConsumerStoppedError:
            raise LogClosedError("kafka log stopped during the read") from None
        if msgs:
            self._resume_at = msgs[-1].offset + 1
        return [to_record(m) for m in msgs if m.offset >= offset]

    async def _fetch(self, max_records: int, timeout_s: float) -> list[ConsumerRecord]:
        batch = await self._consumer.getmany(
            self.tp, timeout_ms=int(timeout_s * 1000), max_records=max_records
        )
        return batch.get(self.tp, [])

    async def _fill(self, offset: int, max_records: int) -> list[ConsumerRecord]:
        """A read with no wait still returns committed records that were not prefetched yet: it
        waits for the fetch as long as the consumer is short of the last stable offset. (Markers
        and aborted records also sit below it, so "short of" is checked against the consumer's
        position, which moves past them, not against the requested offset.)"""
        end = await self._consumer.end_offsets([self.tp])
        deadline = time.monotonic() + FILL_WAIT_S
        while await self._consumer.position(self.tp) < end[self.tp]:
            if msgs := await self._fetch(max_records, POLL_STEP_S):
                return msgs
            if time.monotonic() >= deadline:
                break
        return []


class ReaderPool:
    """Open `PartitionReader`s by (stream, partition), closing the least recently used past
    `max_readers` (never one that is mid-read)."""

    def __init__(self, config: KafkaLogConfig) -> None:
        self._config = config
        self._readers: OrderedDict[tuple[str, int], PartitionReader] = OrderedDict()
        self._opening = asyncio.Lock()

    async def get(self, stream: str, partition: int) -> PartitionReader:
        key = (stream, partition)
        async with self._opening:
            reader = self._readers.get(key)
            if reader is None:
                reader = PartitionReader(self._config, stream, partition)
                try:
                    await reader.start()
                except BaseException:
                    await reader.stop()
                    raise
                self._readers[key] = reader
                await self._evict(keep=key)
            self._readers.move_to_end(key)
            return reader

    async def _evict(self, keep: tuple[str, int]) -> None:
        idle = [k for k, r in self._readers.items() if k != keep and not r.lock.locked()]
        for key in idle[: max(0, len(self._readers) - self._config.max_readers)]:
            with contextlib.suppress(Exception):
                await self._readers.pop(key).stop()

    async def stop(self) -> None:
        readers, self._readers = list(self._readers.values()), OrderedDict()
        await asyncio.gather(*(r.stop() for r in readers), return_exceptions=True)
