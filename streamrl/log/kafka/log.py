"""The Apache Kafka backend of the log, through aiokafka: streams are topics.

    log = open_log("kafka://127.0.0.1:9092", writer_id="run42.trainer")
    async with log:
        await log.ensure_stream("run42.trajectories", 8)

How the contract in `streamrl/log/base.py` maps onto Kafka:
- Durable `append`: an idempotent producer with acks=all; `append_many` sends everything, then
  waits for every acknowledgement (all in-sync replicas have the records).
- Offsets are Kafka offsets. Transaction markers take offsets too, so a partition's offsets have
  gaps after transactions; resume at `last_record.offset + 1`, never by counting.
- Keys pick partitions with `choose_partition` (crc32), not Kafka's murmur2, so a key lands in
  the same partition on every backend. Java clients writing keyed records to the same topics
  would spread a key differently; address partitions explicitly there.
- Readers use read_committed consumers (`reader.py`): records of aborted or open
  transactions are never returned, and `end_offset` is the last stable offset.
- `commit`/`committed` store positions in Kafka's `__consumer_offsets` as a simple consumer
  group (`admin.py`), each with its offset-commit metadata string; `transact` commits
  both through TxnOffsetCommit (`send_offsets_to_transaction` takes (offset, metadata)).
- `transact` is a Kafka transaction on the writer's transactional producer (`txn.py`),
  whose `transactional.id` is `writer_id`; see there for fencing and for the one outcome the
  caller sees only when the outcome stays unknown past `unknown_outcome_s`,
  TransactionOutcomeUnknownError (dedup.py settles and de-duplicates before that).

Cancellation: a cancelled `append`/`append_many` may still land (the producer keeps retrying);
a cancelled `transact` is aborted if its commit was not sent yet, otherwise its outcome is
unknown, as after TransactionOutcomeUnknownError. A cancelled `read` loses nothing: the records
stay buffered for the next read at the same offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import aiokafka.errors as kerr
from aiokafka import AIOKafkaProducer, TopicPartition

from streamrl.log.base import (
    Append,
    Committed,
    Log,
    LogClosedError,
    LogError,
    Offsets,
    Position,
    Record,
    StreamNotFoundError,
    StreamPartition,
    choose_partition,
    committed_positions,
)
from streamrl.log.kafka.admin import KafkaAdmin, NotAuthenticatedError, probe_connection
from streamrl.log.kafka.config import KafkaLogConfig
from streamrl.log.kafka.dedup import end_offsets, find_committed
from streamrl.log.kafka.options import check_replication, check_retention, describe_retention
from streamrl.log.kafka.reader import ReaderPool
from streamrl.log.kafka.txn import (
    NotAuthorizedError,
    TransactionalWriter,
    TransactionOutcomeUnknownError,
    WriterFencedError,
    write_error,
)

__all__ = ["KafkaLog", "KafkaLogConfig", "NotAuthenticatedError", "NotAuthorizedError",
           "TransactionOutcomeUnknownError", "WriterFencedError"]

logger = logging.getLogger(__name__)

# How long `transact` waits for its committed group offsets to become readable (the coordinator
# applies them when the commit marker reaches __consumer_offsets, a moment after the commit).
OFFSETS_VISIBLE_WAIT_S = 10.0


class KafkaLog(Log):
    """A `Log` on a Kafka cluster. Build with `open_log("kafka://...")` or `KafkaLog(config)`;
    `start()` connects (and, with a `writer_id`, fences older incarnations of that writer)."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaLog:
        return cls(KafkaLogConfig.from_url(url, **options))

    def __init__(self, config: KafkaLogConfig) -> None:
        self.config = config
        self.url = f"kafka://{config.bootstrap}"
        self._state = "new"  # new -> started -> stopped
        self._lifecycle = asyncio.Lock()
        self._admin: KafkaAdmin | None = None
        self._producer: AIOKafkaProducer | None = None
        self._txn: TransactionalWriter | None = None
        self._readers: ReaderPool | None = None
        # Partition counts never shrink and streams are never deleted by this log, so a count
        # once seen stays right.
        self._num_partitions: dict[str, int] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        async with self._lifecycle:
            if self._state == "started":
                return
            if self._state == "stopped":
                raise LogClosedError("a stopped kafka log cannot be restarted; open a new one")
            self._admin = KafkaAdmin(self.config)
            self._producer = AIOKafkaProducer(**self.config.producer_settings())
            self._readers = ReaderPool(self.config)
            if self.config.writer_id is not None:
                self._txn = TransactionalWriter(self.config, self.config.writer_id)
            try:
                await self._admin.start()
                await self._producer.start()
                if self._txn is not None:
                    await self._txn.start()
            except BaseException as exc:
                await self._close_clients()
                if isinstance(exc, NotAuthorizedError):
                    raise
                if isinstance(exc, kerr.KafkaError | OSError):
                    if (cause := await probe_connection(self.config)) is not None:
                        raise cause from exc
                    err = LogError(f"cannot start kafka log at {self.url}: {exc!r}")
                    err.retriable = True
                    raise err from exc
                raise
            self._state = "started"

    async def stop(self) -> None:
        async with self._lifecycle:
            if self._state == "stopped":
                return
            self._state = "stopped"
            await self._close_clients()

    async def _close_clients(self) -> None:
        async def close(obj: Any) -> None:
            if obj is not None:
                # Bounded: a producer flushing to an unreachable broker would otherwise retry
                # forever (idempotent batches never expire).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(obj.stop(), self.config.request_timeout_s)

        await asyncio.gather(
            close(self._readers), close(self._txn), close(self._producer), close(self._admin)
        )

    def __del__(self, _warnings: Any = warnings) -> None:
        if getattr(self, "_state", None) == "started":
            _warnings.warn(f"unstopped KafkaLog {self.url}", ResourceWarning, source=self)

    def _check_open(self) -> None:
        if self._state != "started":
            state = "stopped" if self._state == "stopped" else "not started (call start())"
            raise LogClosedError(f"kafka log {self.url} is {state}")

    # -- streams --------------------------------------------------------------------------------
    async def ensure_stream(self, stream: str, num_partitions: int = 1) -> int:
        self._check_open()
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        if stream in self._num_partitions:
            return self._num_partitions[stream]
        assert self._admin is not None
        # Look before creating: with ACLs, CreateTopics on an existing stream is refused to a
        # principal without Create, though the stream is right there for it to use.
        if (count := await self._admin.partition_count(stream)) is not None:
            # An existing stream may delete history (made by hand, or before streams kept it).
            check_retention(f"existing stream {stream!r}",
                            await self._admin.retention_configs(stream),
                            durable=self.config.durable)
            check_replication(f"existing stream {stream!r}",
                              await self._admin.num_brokers(stream),
                              *await self._admin.replication_of(stream),
                              durable=self.config.durable)
            self._num_partitions[stream] = count
            return count
        await self._admin.create_topic(stream, num_partitions)
        count = await self._admin.partition_count(stream, wait_s=self.config.request_timeout_s)
        if count is None:
            raise LogError(f"stream {stream!r} was created but never showed up in metadata")
        self._num_partitions[stream] = count
        return count

    async def num_partitions(self, stream: str) -> int:
        self._check_open()
        return await self._partition_count(stream)

    async def list_streams(self, prefix: str = "") -> list[str]:
        self._check_open()
        assert self._admin is not None
        return sorted(t for t in await self._admin.topic_names() if t.startswith(prefix))

    async def _partition_count(self, stream: str) -> int:
        count = self._num_partitions.get(stream)
        if count is None:
            assert self._admin is not None
            count = await self._admin.partition_count(stream)
            if count is None:
                raise StreamNotFoundError(f"stream {stream!r} does not exist")
            self._num_partitions[stream] = count
        return count

    async def _check_partition(self, stream: str, partition: int) -> None:
        count = await self._partition_count(stream)
        if not 0 <= partition < count:
            raise ValueError(f"partition {partition} out of range for stream {stream!r} ({count})")

    async def _targets(self, appends: Sequence[Append]) -> list[tuple[int, Append]]:
        """Each append's partition; checks all of them before anything is sent."""
        targets = []
        for app in appends:
            count = await self._partition_count(app.stream)
            p = choose_partition(app.key, count) if app.partition is None else app.partition
            await self._check_partition(app.stream, p)
            targets.append((p, app))
        return targets

    # -- writing --------------------------------------------------------------------------------
    async def append_many(self, appends: Sequence[Append]) -> list[Position]:
        self._check_open()
        targets = await self._targets(appends)
        producer = self._producer
        assert producer is not None
        try:
            futures = [
                await producer.send(
                    app.stream, app.value, key=app.key, partition=p, headers=list(app.headers),
                    timestamp_ms=app.timestamp_ms)
                for p, app in targets
            ]
            metas = await asyncio.wait_for(asyncio.gather(*futures), self.config.append_timeout_s)
        except (kerr.KafkaError, TimeoutError) as exc:
            self._check_open()
            streams = ", ".join(sorted({app.stream for app in appends}))
            raise write_error(exc, f"append to {streams} not acknowledged",
                              self.config.sasl_username) from exc
        return [
            Position(app.stream, m.partition, m.offset)
            for (_p, app), m in zip(targets, metas, strict=True)
        ]

    async def transact(
        self, group: str, offsets: Offsets, appends: Sequence[Append]
    ) -> list[Position]:
        self._check_open()
        if self._txn is None:
            raise ValueError("transact needs the writer's stable id: open_log(url, writer_id=...)")
        for sp in offsets:
            await self._check_partition(sp.stream, sp.partition)
        targets = await self._targets(appends)
        if not offsets and not targets:
            return []
        committed = committed_positions(group, offsets)
        tp_offsets = {TopicPartition(s, p): (c.offset, c.metadata)
                      for (s, p), c in committed.items()}
        starts = await end_offsets(self, targets)
        deadline = time.monotonic() + self.config.unknown_outcome_s
        while True:
            try:
                metas = await self._txn.run(group, tp_offsets, targets)
                positions = [Position(app.stream, m.partition, m.offset)
                             for (_p, app), m in zip(targets, metas, strict=True)]
                break
            except TransactionOutcomeUnknownError as exc:
                # Never aborted blindly, never repeated blindly: see dedup.py. Without
                # records there is nothing to find, and committing the same offsets again is
                # harmless.
                found = (await find_committed(self, self.settle_transactions, targets, starts,
                                             deadline, exc)
                         if targets else None)
                if found is not None:
                    logger.warning("unconfirmed commit of %s had committed; not repeated",
                                   self.config.writer_id)
                    positions = found
                    break
                if time.monotonic() >= deadline:
                    raise
                logger.warning("unconfirmed commit of %s had not committed; running it again",
                               self.config.writer_id)
        if committed:
            await self._await_offsets_visible(group, committed)
        return positions

    async def settle_transactions(self) -> None:
        """Make sure the writer's producer is initialised, which settles any transaction an
        earlier producer of this writer left unconfirmed; raises if the broker is unreachable."""
        self._check_open()
        assert self._txn is not None
        await self._txn.settle()

    async def _await_offsets_visible(
        self, group: str, offsets: Mapping[StreamPartition, Committed]
    ) -> None:
        """Read-your-writes for `committed`: the offsets are durable once the commit returns,
        but the group coordinator serves them only after the commit marker reaches it. A
        partition whose committed offset is already past ours was overtaken by a later commit
        of the same group (concurrent transacts): ours is visible in the sense that matters."""
        assert self._admin is not None
        deadline = time.monotonic() + OFFSETS_VISIBLE_WAIT_S
        while not _caught_up(await self._admin.fetch_offsets(group, list(offsets)), offsets):
            if time.monotonic() >= deadline:
                logger.warning("offsets of group %r committed but not yet readable", group)
                return
            await asyncio.sleep(0.01)

    # -- reading --------------------------------------------------------------------------------
    async def read(
        self,
        stream: str,
        partition: int,
        offset: int,
        *,
        max_records: int = 1000,
        timeout_s: float = 0.0,
    ) -> list[Record]:
        self._check_open()
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        await self._check_partition(stream, partition)
        assert self._readers is not None
        reader = await self._readers.get(stream, partition)
        async with reader.lock:
            try:
                records = await reader.read(offset, max_records, timeout_s)
            except (LogError, kerr.KafkaError):
                self._check_open()  # a read cut short by stop() says so
                raise
        if not records:
            self._check_open()  # a wait ended by stop() is not an empty partition
        return records

    async def end_offset(self, stream: str, partition: int) -> int:
        self._check_open()
        await self._check_partition(stream, partition)
        assert self._readers is not None
        return await (await self._readers.get(stream, partition)).end_offset()

    async def start_offset(self, stream: str, partition: int) -> int:
        self._check_open()
        await self._check_partition(stream, partition)
        assert self._readers is not None
        return await (await self._readers.get(stream, partition)).start_offset()

    async def contiguous(self, stream: str) -> bool:
        await self.num_partitions(stream)
        return False  # transaction markers take offsets

    async def retention(self, stream: str) -> str:
        self._check_open()
        await self._partition_count(stream)
        assert self._admin is not None
        return describe_retention(await self._admin.retention_configs(stream))

    # -- consumer groups ------------------------------------------------------------------------
    async def committed_with_metadata(
        self, group: str, stream: str, partition: int
    ) -> Committed | None:
        self._check_open()
        assert self._admin is not None
        sp = StreamPartition(stream, partition)
        return (await self._admin.fetch_offsets(group, [sp]))[sp]

    async def commit(self, group: str, offsets: Offsets) -> None:
        self._check_open()
        committed = committed_positions(group, offsets)
        for sp in committed:
            await self._check_partition(sp.stream, sp.partition)
        if committed:
            assert self._admin is not None
            await self._admin.commit_offsets(group, committed)


def _caught_up(got: Mapping[StreamPartition, Committed | None],
               want: Mapping[StreamPartition, Committed]) -> bool:
    return all((c := got.get(sp)) is not None and (c == w or c.offset > w.offset)
               for sp, w in want.items())
