"""The dead-letter stream: where a component puts input it refuses, and keeps running.

Rejecting never loses anything already accepted: the original bytes go to `<run>.dlq` together
with the reason and where they came from, and the component moves on to the next record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from streamrl.log import Log, Position, Record
from streamrl.schemas import DeadLetter, DecodeError, LogPosition, encode_event
from streamrl.streams import RunStreams

T = TypeVar("T")


def reason_code(error: BaseException) -> str:
    return error.reason_code if isinstance(error, DecodeError) else type(error).__name__


class DeadLetters:
    """Writes a run's dead letters on behalf of one component (e.g. "trainer", "producer-3")."""

    def __init__(self, log: Log, run_id: str, component: str) -> None:
        self.log = log
        self.run_id = run_id
        self.component = component
        self.stream = RunStreams(run_id).dlq
        self.num_rejected = 0

    async def reject(
        self, original: bytes, error: BaseException, *, source: Position | None = None
    ) -> Position:
        """Record that `original` (from `source`, if it came from the log) was refused."""
        letter = DeadLetter(
            run_id=self.run_id,
            reason_code=reason_code(error),
            detail=str(error)[:4096],
            component=self.component,
            source=LogPosition(*source) if source is not None else None,
            original=bytes(original),
        )
        position = await self.log.append(
            self.stream, encode_event(letter), key=self.component.encode()
        )
        self.num_rejected += 1
        return position

    async def decode_or_reject(self, record: Record, decode: Callable[[bytes], T]) -> T | None:
        """`decode(record.value)`, or None after dead-lettering a record that breaks the contract.
        Only `DecodeError`s are contract violations; anything else is a bug and propagates."""
        try:
            return decode(record.value)
        except DecodeError as error:
            await self.reject(record.value, error, source=record.position)
            return None
