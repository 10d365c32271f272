"""Where a producer stands in each prompts partition it owns, and what it commits there.

Groups finish out of order: a long generation holds its prompt while later prompts finish and are
published. With each published group, in the same transaction, the producer commits for the
group's partition
  - the position: the offset of its oldest prompt not finished yet (read, not yet published), or
    its next offset to read when none is open, and
  - as the position's metadata, the offsets past the position that are finished already.
Whoever owns the partition next (the same producer restarted after kill -9, or another after
`streamrl scale`) reads both back (`PartitionProgress.restore`) and skips the finished offsets:
every prompt is generated until it is published once, and no published group is generated again.
"Finished" means its transaction committed: a group published, or rejected by the recipe's filter
(its Rejected event is the transaction's record), or requeued by a handover.

Metadata format: "done1:" + base64url (no padding) of a bitmap whose bit i (least significant
first within byte i // 8) says offset `position + 1 + i` is finished; trailing zero bytes are
dropped, so a producer with a few groups in flight commits a few bytes. The bitmap covers
`WINDOW` offsets past the position, which keeps it under the logs' 4096-byte metadata limit; a
producer never reads a prompt beyond that window (`room`), so every finished offset fits. The
oldest open prompt holds the window back until it finishes, as it holds the position.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence

from streamrl.log import MAX_METADATA_BYTES, Committed, Record

PREFIX = "done1:"
WINDOW = 16384  # offsets past the position a bitmap covers: 2048 bytes, 2732 in base64
assert len(PREFIX) + (WINDOW // 8 * 4 + 2) // 3 <= MAX_METADATA_BYTES


def encode_done(position: int, done: Iterable[int]) -> str:
    """The metadata for `position` with the finished offsets `done` (each past the position)."""
    bits = bytearray()
    for offset in done:
        i = offset - position - 1
        assert 0 <= i < WINDOW, f"finished offset {offset} outside the window of {position}"
        if len(bits) <= i // 8:
            bits.extend(bytes(i // 8 + 1 - len(bits)))
        bits[i // 8] |= 1 << (i % 8)
    if not bits:
        return ""
    return PREFIX + base64.urlsafe_b64encode(bytes(bits)).decode().rstrip("=")


def decode_done(position: int, metadata: str, where: str) -> set[int]:
    """The finished offsets that `metadata`, committed with `position`, records; "" means none.
    `where` names the partition in the error for metadata no producer wrote."""
    if not metadata:
        return set()
    body = metadata.removeprefix(PREFIX)
    try:
        if body == metadata:
            raise ValueError("unknown prefix")
        bits = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (ValueError, binascii.Error) as err:
        raise ValueError(
            f"{where}: the producers' committed position {position} carries metadata "
            f"{metadata[:40]!r} that is not a finished-prompts record ('{PREFIX}<base64>' or "
            f"empty): {err}; was the producers' group committed by something else?") from err
    if len(bits) * 8 > WINDOW:
        raise ValueError(f"{where}: finished-prompts record of {len(bits)} bytes is longer than "
                         f"the window of {WINDOW} offsets")
    return {position + 1 + 8 * j + b for j, byte in enumerate(bits) for b in range(8)
            if byte >> b & 1}


class PartitionProgress:
    """One owned partition: the next offset to read, the prompts read and not finished (`open`),
    and the finished ones past the position (`done`). Changed only from the producer's event
    loop; `finishing` and `finished` bracket one commit, under the producer's publish lock."""

    def __init__(self, next_read: int, done: Iterable[int] = ()) -> None:
        self.next_read = next_read
        self.open: set[int] = set()
        self.done: set[int] = set(done)

    @classmethod
    def restore(cls, committed: Committed | None, where: str) -> PartitionProgress:
        """Progress from the group's committed position (None: never committed, start at 0)."""
        if committed is None:
            return cls(0)
        return cls(committed.offset, decode_done(committed.offset, committed.metadata, where))

    def position(self) -> int:
        return min(self.open, default=self.next_read)

    def room(self) -> int:
        """How many offsets may be read now without leaving the window past the position."""
        return max(0, self.position() + 1 + WINDOW - self.next_read)

    def take(self, records: Sequence[Record]) -> list[Record]:
        """Records just read from `next_read` on, in order: the ones to generate. Finished ones
        are skipped; those past the window are left for a later read."""
        limit = self.position() + 1 + WINDOW
        out = []
        for record in records:
            if record.offset >= limit:
                break
            self.next_read = record.offset + 1
            if record.offset not in self.done:
                self.open.add(record.offset)
                out.append(record)
        return out

    def finishing(self, offsets: Iterable[int]) -> Committed:
        """The position to commit with the groups at `offsets` finished; nothing changes here
        until `finished` says the commit happened."""
        offsets = set(offsets)
        position = min(self.open - offsets, default=self.next_read)
        return Committed(position, encode_done(position, {
            o for o in self.done | offsets if o > position}))

    def finished(self, offsets: Iterable[int]) -> None:
        """The commit made by `finishing(offsets)` happened."""
        offsets = set(offsets)
        self.open -= offsets
        self.done |= offsets
        position = self.position()
        self.done = {o for o in self.done if o > position}

    def handed_over(self, requeued: Iterable[int], queued: Iterable[int]) -> Committed:
        """The position a leaving producer commits: its `requeued` prompts count as finished (a
        new record carries each), its `queued` ones (read, never started) stay to be read."""
        queued = set(queued)
        position = min(queued, default=self.next_read)
        return Committed(position, encode_done(position, {
            o for o in self.done | set(requeued) if o > position and o not in queued}))
