"""Transactions and consumer-group positions of the file log.

A transaction (`transact`) appends records to any partitions and sets a group's positions as one
atomic step. The protocol, all under the log-wide transaction lock (`<root>/_txn/.lock`, flock):

1. roll forward whatever is pending (below);
2. take the target partitions' locks, in sorted order, and read their ends (recovering torn
   tails): this fixes the offset every record will get;
3. write the transaction record, one checksummed frame holding the group, its new positions and
   every record with its reserved offset, to `<root>/_txn/<time_ns>-<id>.txn`; fsync it and the
   directory. From this moment the transaction has happened;
4. append each partition's records, each frame carrying the transaction id; fsync each;
5. merge the positions into the group file (`<root>/_groups/<group>.json`, atomic replace);
6. delete the record, fsync the directory, release the locks.

Visibility: every frame a transaction writes carries its id, and readers stop before a frame
whose transaction record still exists, so a transaction's records become visible together, after
step 6 (the group positions too, since `committed` waits for the lock).

Roll forward only. A whole, checksum-valid record is durable, and whoever finds it completes it,
whole, under the transaction lock: `start()`, `commit`, `committed` and `transact`, and any writer
about to append to a partition the record names (else it would take the offsets reserved there).
A writer holding partition P's lock that finds a whole record naming P knows its owner is dead,
since a live transaction holds the locks of all its partitions from step 2 to step 6; it then
lets go of P, takes the transaction lock (the lock order is always transaction lock, then
partition locks in sorted order) and completes the record. Applying is idempotent: a part is
there when the frame at its reserved offset carries the transaction id, and the records a crash
left already written are skipped. Group positions are rewritten whole, and every group write
first rolls forward, so applying them again is harmless.

A torn record (cut short, zero-filled, or failing its checksum at its end) was never durable, so
nothing of it was applied: under the transaction lock (where no live transaction can be writing
one) it is moved to `_txn/torn/`, and the transaction did not happen. Writers without the lock
skip records they cannot parse: one may be being written right now for other partitions.

Everything is validated before step 3, so a transact that fails there leaves nothing. A write
failure after step 3 raises `TransactionInDoubtError`: the transaction is durable and the next
writer completes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import msgspec

from streamrl.log.base import Committed, LogWriteError, StreamPartition
from streamrl.log.file.frames import SegmentCorruptionError
from streamrl.log.file.groups import GroupStore, flatten, unflatten
from streamrl.log.file.txn_records import (
    SUFFIX,
    TxnItem,
    TxnPart,
    TxnRecord,
    fsync_file,
    read_record,
    write_record,
)
from streamrl.log.file.writer import Item, PartitionWriter, fsync_dir

log = logging.getLogger("streamrl.log.file")


class TransactionInDoubtError(LogWriteError):
    """The transaction record is durable but applying it failed: it will be completed by the
    next writer (roll forward), so the transaction counts as done."""


class Hooks:
    """Test hooks: crash-injection points, None in normal operation."""

    after_txn_durable: Callable[[], None] | None = None
    after_txn_part: Callable[[StreamPartition], None] | None = None


HOOKS = Hooks()


Writing = Callable[[StreamPartition], AbstractContextManager[PartitionWriter]]


class TxnStore:
    """The `_txn` directory, and the group positions through it. Used only from the log's
    writer thread."""

    def __init__(self, root: Path, writing: Writing) -> None:
        self.dir = root / "_txn"
        self.groups = GroupStore(root)
        self._writing = writing
        self._lock_fd: int | None = None
        self._parsed: dict[str, TxnRecord] = {}
        self._durable: set[str] = set()
        self.held = False  # this store holds the transaction lock

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the log-wide transaction lock (re-entrant within this store)."""
        if self.held:
            yield
            return
        if self._lock_fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.held = True
        try:
            yield
        except OSError as err:
            raise LogWriteError(f"{self.dir}: transaction I/O failed: {err}") from err
        finally:
            self.held = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def pending(self) -> list[str]:
        """Names of the transaction records present, oldest first."""
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(SUFFIX))
        except FileNotFoundError:
            names = []
        if self._parsed:  # forget records finished meanwhile (possibly by other processes)
            self._parsed = {n: r for n, r in self._parsed.items() if n in names}
            self._durable &= set(names)
        return names

    def _read(self, name: str) -> TxnRecord | None:
        """The record in `name` (cached); None if it is torn. Raises on corruption."""
        record = self._parsed.get(name)
        if record is None:
            record = read_record(self.dir / name)
            if record is not None:
                self._parsed[name] = record
        return record

    def _make_durable(self, name: str) -> None:
        """fsync a record before applying it: a dead owner may have died before its fsync."""
        if name not in self._durable:
            fsync_file(self.dir / name)
            fsync_dir(self.dir)
            self._durable.add(name)

    # -- roll forward --------------------------------------------------------------------------
    def touching(self, sp: StreamPartition) -> bool:
        """Whether a whole pending record has records for `sp`. Asked by a writer holding `sp`'s
        lock, a yes means the record's owner is dead (see the module docstring)."""
        for name in self.pending():
            try:
                record = self._read(name)
            except (FileNotFoundError, SegmentCorruptionError, msgspec.DecodeError):
                continue  # finished meanwhile, or not ours to judge without the txn lock
            if record is not None and any((p.stream, p.partition) == sp for p in record.parts):
                return True
        return False

    def apply_parts(self, sp: StreamPartition, writer: PartitionWriter) -> None:
        """Apply the pending records' parts for `sp` (txn lock and `sp`'s lock held)."""
        assert self.held
        names = self.pending()
        for name in names:
            record = self._read(name)
            for part in record.parts if record is not None else ():
                if (part.stream, part.partition) == sp:
                    self._make_durable(name)
                    items = [(i.key, i.headers, i.value) for i in part.items]
                    writer.apply_txn_part(
                        record.txn_id, part.start_offset, items, record.timestamp_ms
                    )

    def roll_forward(self) -> None:
        """Complete every durable pending transaction; set torn ones aside (txn lock held)."""
        for name in self.pending():
            record = self._read(name)
            if record is None:
                self._set_aside(name)
                continue
            self._make_durable(name)
            for part in sorted(record.parts, key=lambda p: (p.stream, p.partition)):
                with self._writing(StreamPartition(part.stream, part.partition)):
                    pass  # taking the lock under the txn lock applies the pending parts
            self.groups.merge(record.group, unflatten(record.positions, record.metadata))
            self._finish(name)

    def _set_aside(self, name: str) -> None:
        torn = self.dir / "torn"
        torn.mkdir(exist_ok=True)
        os.replace(self.dir / name, torn / name)
        fsync_dir(torn)
        fsync_dir(self.dir)
        log.warning("%s: torn transaction record (never durable, nothing applied) moved to %s",
                    self.dir / name, torn / name)  # fmt: skip

    def _finish(self, name: str) -> None:
        os.unlink(self.dir / name)
        fsync_dir(self.dir)
        self._parsed.pop(name, None)
        self._durable.discard(name)

    # -- transactions --------------------------------------------------------------------------
    def transact(
        self,
        group: str,
        positions: Mapping[StreamPartition, Committed],
        parts: Mapping[StreamPartition, Sequence[Item]],
        timestamp_ms: int,
    ) -> dict[StreamPartition, int]:
        """Run the protocol above; returns each partition's first reserved offset."""
        self.groups.path(group)  # a bad group name fails before anything is written
        with self.locked():
            self.roll_forward()
            if not parts:
                self.groups.merge(group, positions)
                return {}
            flat, meta = flatten(positions)
            with contextlib.ExitStack() as stack:
                writers = {sp: stack.enter_context(self._writing(sp)) for sp in sorted(parts)}
                starts = {sp: w.next_offset for sp, w in writers.items()}
                txn_id = uuid.uuid4().bytes
                record = TxnRecord(
                    txn_id=txn_id,
                    group=group,
                    timestamp_ms=timestamp_ms,
                    positions=list(flat),
                    metadata=list(meta),
                    parts=[
                        TxnPart(
                            sp.stream,
                            sp.partition,
                            starts[sp],
                            [TxnItem(k, h, bytes(v)) for k, h, v in parts[sp]],
                        )
                        for sp in writers
                    ],
                )
                name = write_record(self.dir, record)
                self._durable.add(name)
                if HOOKS.after_txn_durable is not None:
                    HOOKS.after_txn_durable()
                try:
                    for sp, writer in writers.items():
                        writer.apply_txn_part(txn_id, starts[sp], parts[sp], timestamp_ms)
                        if HOOKS.after_txn_part is not None:
                            HOOKS.after_txn_part(sp)
                    self.groups.merge(group, positions)
                    self._finish(name)
                except (OSError, LogWriteError) as err:
                    raise TransactionInDoubtError(
                        f"transaction {txn_id.hex()} is durable but applying it failed ({err}); "
                        "the next writer completes it"
                    ) from err
            return starts

    # -- groups --------------------------------------------------------------------------------
    def commit(self, group: str, positions: Mapping[StreamPartition, Committed]) -> None:
        self.groups.path(group)
        with self.locked():
            self.roll_forward()
            self.groups.merge(group, positions)

    def committed(self, group: str) -> dict[StreamPartition, Committed]:
        """The group's positions, after completing any transaction that a crash left pending."""
        if self.pending():
            with self.locked():
                self.roll_forward()
        return self.groups.read(group)
