"""Settling a Kafka transaction whose commit went unanswered, without ever aborting it blindly.

A commit that times out (broker paused, connection lost) may or may not have happened. Aborting
would be wrong if it did: a reader may already have acted on it. Retrying blindly would be wrong
too: the trainer would announce the same weight version twice. So `KafkaLog.transact` does this:

1. Before the transaction, note the end offset of every partition it writes.
2. On an unknown outcome the writer has replaced its producer; `settle` (the log's
   `settle_transactions`) makes sure the new one has initialised under the same transactional
   id, which makes the coordinator finish the old transaction first (commit if the commit was
   logged, abort otherwise).
3. Read each written partition from its noted offset: a record byte-equal to one of ours is ours
   (every event carries a unique event id, so equal bytes mean the same event; a trajectory
   record names its group). Found: the transaction committed, return where its records are. Not
   found: it was aborted, and running it again is safe.

A transaction is atomic, so its records are all there or none are; anything else is reported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

from streamrl.log.base import Append, Log, LogError, Position
from streamrl.log.kafka.txn import TransactionOutcomeUnknownError

logger = logging.getLogger(__name__)

Target = tuple[int, Append]  # (partition, record)
SETTLE_RETRY_S = 0.5


async def end_offsets(log: Log, targets: Sequence[Target]) -> dict[tuple[str, int], int]:
    """The end offsets (last stable offsets) of the partitions `targets` write."""
    parts = sorted({(app.stream, p) for p, app in targets})
    ends = await asyncio.gather(*(log.end_offset(s, p) for s, p in parts))
    return dict(zip(parts, ends, strict=True))


async def find_committed(log: Log, settle: Callable[[], Awaitable[None]],
                         targets: Sequence[Target], starts: dict[tuple[str, int], int],
                         deadline: float,
                         cause: TransactionOutcomeUnknownError) -> list[Position] | None:
    """Where the records of the unconfirmed transaction landed, or None if it did not commit.
    `settle` finishes the writer's unconfirmed transaction first. Keeps trying while the broker
    is unreachable, until `deadline`; then re-raises `cause`."""
    while True:
        try:
            await settle()
            return await _scan(log, targets, starts)
        except LogError as exc:
            if not exc.retriable or time.monotonic() >= deadline:
                raise cause from exc
            logger.warning("settling an unconfirmed transaction: %s; retrying", exc)
            await asyncio.sleep(SETTLE_RETRY_S)


async def _scan(log: Log, targets: Sequence[Target],
                starts: dict[tuple[str, int], int]) -> list[Position] | None:
    landed: dict[tuple[str, int], dict[bytes, list[int]]] = {}
    for (stream, p), start in starts.items():
        by_value: dict[bytes, list[int]] = defaultdict(list)
        offset = start
        while records := await log.read(stream, p, offset, max_records=256):
            for r in records:
                by_value[r.value].append(r.offset)
            offset = records[-1].offset + 1
        landed[(stream, p)] = by_value
    positions: list[Position | None] = []
    for p, app in targets:
        offsets = landed[(app.stream, p)].get(app.value)
        positions.append(Position(app.stream, p, offsets.pop(0)) if offsets else None)
    found = [pos for pos in positions if pos is not None]
    if not found:
        return None
    if len(found) != len(positions):
        missing = sum(pos is None for pos in positions)
        raise LogError(f"transaction only partly visible after settling ({missing} of "
                       f"{len(positions)} records missing): the log broke atomicity")
    return found
