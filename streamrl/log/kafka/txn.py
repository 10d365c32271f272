"""Kafka transactions for `KafkaLog.transact`: records and group offsets committed atomically.

One transactional producer per logical writer, its `transactional.id` the writer's `writer_id`.
Starting it (InitProducerId) bumps the id's epoch, which *fences* every older incarnation: a
trainer that was declared dead but is still running (a zombie) can neither send nor commit
again, and its open transaction is aborted. That is why the id must be stable across restarts
of one writer and never shared by two live ones.

Outcomes `run` reports:
- success: the records and offsets are committed (and durable: acks=all).
- LogWriteError before the commit was sent: the transaction was aborted (or will be, when the
  replacement producer's InitProducerId aborts it), so nothing of it is visible; retrying is safe.
- TransactionOutcomeUnknownError: the commit was sent but no answer came (timeout, lost
  connection). It may have committed. It is *not* aborted blindly, which could undo a commit a
  reader already acted on; the caller retries and de-duplicates by event id (the trainer looks
  for its BatchFormed event id before forming the batch again). Before raising, the writer
  re-initialises its producer, which makes the coordinator settle the transaction, so when the
  broker is reachable the caller's check reads the final outcome.
- WriterFencedError: a newer incarnation took over; this writer must stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aiokafka.errors as kerr
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from streamrl.log.base import Append, LogClosedError, LogWriteError
from streamrl.log.kafka.config import KafkaLogConfig

_FENCED = (kerr.ProducerFenced, kerr.InvalidProducerEpoch, kerr.TransactionalIdAuthorizationFailed)
# What a broker with ACLs answers when the principal lacks a permission.
_DENIED = (kerr.TopicAuthorizationFailedError, kerr.TransactionalIdAuthorizationFailed,
           kerr.GroupAuthorizationFailedError, kerr.ClusterAuthorizationFailedError)


class TransactionOutcomeUnknownError(LogWriteError):
    """The commit's result is unknown: it may or may not have happened. Retry idempotently."""

    retriable = True


class WriterFencedError(LogWriteError):
    """Another instance with the same writer_id has started; this one can no longer commit."""

    retriable = False


class NotAuthorizedError(LogWriteError):
    """The broker's ACLs deny this principal the operation (e.g. a producer writing the weights
    stream). Retrying cannot help; an operator must grant it (docs/kafka-security.md)."""

    retriable = False


def denied_error(exc: BaseException, what: str, principal: str | None) -> NotAuthorizedError:
    who = f"User:{principal}" if principal else "this client (no SASL user)"
    resource = {
        kerr.TopicAuthorizationFailedError: "the stream(s)",
        kerr.TransactionalIdAuthorizationFailed: "the transactional id (writer_id)",
        kerr.GroupAuthorizationFailedError: "the consumer group",
        kerr.ClusterAuthorizationFailedError: "the cluster",
    }.get(type(exc), "the resource")
    names = ", ".join(sorted(map(str, exc.args[0]))) if exc.args and isinstance(
        exc.args[0], set | frozenset) else (str(exc.args[0]) if exc.args else "")
    return NotAuthorizedError(
        f"{what}: not authorized: Kafka ACLs deny {who} access to {resource} {names} "
        f"({type(exc).__name__}); an operator must grant it, see docs/kafka-security.md")


def write_error(exc: BaseException, what: str, principal: str | None = None) -> LogWriteError:
    """A LogWriteError for an aiokafka failure, keeping its retriable flag (timeouts retry)."""
    if isinstance(exc, _DENIED):
        return denied_error(exc, what, principal)
    if isinstance(exc, _FENCED):
        return WriterFencedError(f"{what}: fenced by a newer writer with the same writer_id")
    err = LogWriteError(f"{what}: {type(exc).__name__}: {exc}")
    # Timeouts and dropped connections (OSError) pass; Kafka's own errors say whether they do.
    err.retriable = isinstance(exc, OSError | kerr.KafkaTimeoutError) or bool(
        getattr(exc, "retriable", False)
    )
    return err


class TransactionalWriter:
    """Runs one transaction at a time on the writer's transactional producer."""

    def __init__(self, config: KafkaLogConfig, transactional_id: str) -> None:
        self._config = config
        self.transactional_id = transactional_id
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._fenced = False
        self._closed = False

    async def start(self) -> None:
        """Initialise the producer id now, so that starting the log fences older incarnations
        before this one reads any committed position."""
        async with self._lock:
            await self._ensure_producer()

    async def settle(self) -> None:
        """A live producer under the transactional id (see `KafkaLog.settle_transactions`)."""
        async with self._lock:
            await self._ensure_producer()

    async def stop(self) -> None:
        self._closed = True
        await self._discard()

    @property
    def producer(self) -> AIOKafkaProducer | None:
        return self._producer

    async def run(
        self,
        group: str,
        offsets: dict[TopicPartition, tuple[int, str]],
        sends: Sequence[tuple[int, Append]],
    ) -> list[RecordMetadata]:
        """Send `sends` (partition, record) and commit `group`'s `offsets` (offset, metadata) in
        one transaction (TxnOffsetCommit carries the metadata, as a consumer's commit does)."""
        async with self._lock:
            producer = await self._ensure_producer()
            await producer.begin_transaction()
            try:
                futures = [
                    await producer.send(
                        app.stream, app.value, key=app.key, partition=p, headers=list(app.headers),
                        timestamp_ms=app.timestamp_ms)
                    for p, app in sends
                ]
                metas = list(await asyncio.gather(*futures))
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, group)
            except BaseException as exc:
                # The commit was never sent, so aborting is always right. Shielded: a cancelled
                # caller must not leave the transaction open, blocking readers at the last stable
                # offset until the broker's transaction timeout.
                await asyncio.shield(self._abort(producer))
                if not isinstance(exc, Exception):
                    raise
                if self._fenced:
                    raise WriterFencedError(
                        f"writer {self.transactional_id!r} was fenced by a newer instance"
                    ) from exc
                raise write_error(exc, "transaction aborted", self._config.sasl_username) from exc
            try:
                await asyncio.wait_for(producer.commit_transaction(), self._config.commit_timeout_s)
            except _FENCED as exc:
                self._fenced = True
                await self._discard()
                raise write_error(exc, "transaction commit") from exc
            except (TimeoutError, kerr.KafkaError, asyncio.CancelledError) as exc:
                # Unknown outcome: replace the producer without aborting. The new one's
                # InitProducerId (same id) makes the coordinator settle this transaction first,
                # committing it if the commit was logged and aborting it otherwise, so readers
                # are not held up and the caller's duplicate check sees the final state.
                await asyncio.shield(self._replace())
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise TransactionOutcomeUnknownError(
                    f"commit of transaction {self.transactional_id!r} unconfirmed after "
                    f"{self._config.commit_timeout_s}s ({type(exc).__name__}); it may have "
                    "committed: retry and de-duplicate by event id"
                ) from exc
            return metas

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._closed:
            raise LogClosedError("kafka log is stopped")
        if self._fenced:
            raise WriterFencedError(
                f"writer {self.transactional_id!r} was fenced by a newer instance; it must stop"
            )
        if self._producer is None:
            producer = AIOKafkaProducer(
                **self._config.transactional_settings(self.transactional_id)
            )
            try:
                await producer.start()
            except BaseException as exc:
                await producer.stop()
                if isinstance(exc, Exception):
                    raise write_error(exc, f"starting the transactional producer of writer "
                                            f"{self.transactional_id!r}",
                                      self._config.sasl_username) from exc
                raise
            self._producer = producer
        return self._producer

    async def _abort(self, producer: AIOKafkaProducer) -> None:
        try:
            if (cause := _fatal_cause(producer)) is not None:
                raise cause
            await asyncio.wait_for(producer.abort_transaction(), self._config.commit_timeout_s)
            return
        except _FENCED:
            self._fenced = True
            await self._discard()
            return
        except Exception:  # any other failure: recover the same way as from a lost abort
            pass
        # The abort did not get through: a new producer with the same id aborts the open
        # transaction as it initialises, now rather than at the broker's transaction timeout.
        await self._replace()

    async def _replace(self) -> None:
        """A fresh producer under the same transactional id, which settles any transaction the
        old one left open. Failing that (broker away), the next `run` tries again."""
        await self._discard()
        with contextlib.suppress(LogWriteError):
            await self._ensure_producer()

    async def _discard(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


def _fatal_cause(producer: AIOKafkaProducer) -> BaseException | None:
    """The error that put the producer's transaction state in FATAL_ERROR (then no abort is
    possible), or None. aiokafka keeps this state on a private attribute only."""
    txn = producer._txn_manager
    if txn is None or not txn.is_fatal_error():
        return None
    waiter = txn.wait_for_transaction_end()
    if waiter is not None and waiter.done() and not waiter.cancelled():
        return waiter.exception() or kerr.KafkaError("transactional producer in fatal state")
    return kerr.KafkaError("transactional producer in fatal state")
