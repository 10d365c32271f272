"""Everything a run recorded, read once and indexed for the checks: `load_run(log, run_id)`.

Audit and the staleness report read the same `RunRecords`, so both see the log the same way:
every committed record of the run's five streams, decoded, with its position; records that fail
decoding are kept aside (with why) rather than skipped, because an audit must account for them.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import TypeVar

import msgspec
import pyarrow as pa

from streamrl.log import Log, Position, Record, StreamNotFoundError
from streamrl.recipe.context import RunContext, context_from_event
from streamrl.records import decode_trajectory_record
from streamrl.schemas import (
    BatchFormed,
    DecodeError,
    Event,
    LogPosition,
    RunStarted,
    WeightVersionAnnounced,
    decode_event,
)
from streamrl.streams import RunStreams, StreamKind, check_run_id

E = TypeVar("E", bound=Event)


def as_position(p: LogPosition) -> Position:
    """A position recorded in an event (BatchFormed, DeadLetter) as the log's Position."""
    return Position(p.stream, p.partition, p.offset)


class AuditInputError(ValueError):
    """The log holds nothing that can be audited under this run id (exit code 2)."""


class SampleRow(msgspec.Struct, frozen=True, kw_only=True):
    """One trajectory row, as the checks and the staleness report need it."""

    sample_id: str
    group_id: str
    prompt_id: str
    producer_id: str
    position: Position
    policy_version: int  # weights when generation started
    response_versions: tuple[int, ...]  # [num_response_tokens] version per token
    loss_mask: tuple[bool, ...]  # [num_response_tokens]
    started_at_us: int
    finished_at_us: int
    arrived_ms: int  # the log's timestamp of the record

    @property
    def min_version(self) -> int:
        """The oldest weights that sampled any token (the trainer's lag is measured from it)."""
        return min(self.response_versions, default=self.policy_version)

    @property
    def max_version(self) -> int:
        return max(self.response_versions, default=self.policy_version)


class Undecodable(msgspec.Struct, frozen=True, kw_only=True):
    position: Position
    reason_code: str
    what: str


class RunRecords(msgspec.Struct, kw_only=True):
    run_id: str
    log_url: str
    ctx: RunContext
    started: RunStarted
    records: dict[StreamKind, list[Record]]  # every committed record, partition by partition
    events: dict[StreamKind, list[tuple[Position, Event]]]  # decoded, for the event streams
    rows: list[SampleRow]  # every row of this run's trajectories stream, in log order
    # The rows of each trajectory record: this run's, plus the records of other runs that its
    # batches trained on (a replay or counterfactual re-training reads its parent's stream).
    rows_at: dict[Position, list[SampleRow]]
    undecodable: list[Undecodable]
    # A fork's versions start at the parent's fork version; versions up to it are the parent's
    # (announced in the parent's weights stream) and may appear in carried trajectories.
    base_version: int = 0
    inherited_versions: frozenset[int] = frozenset()
    # Every stream numbers its records 0, 1, 2, ... (`Log.contiguous`): false on Kafka, and for
    # a run imported from Kafka whose offsets were kept.
    contiguous: bool = True

    @property
    def streams(self) -> RunStreams:
        return RunStreams(self.run_id)

    @property
    def contiguous_offsets(self) -> bool:
        """Memory and file logs number records 0, 1, 2, ...; Kafka's transaction markers take
        offsets too, so there only semantic checks (duplicates) can find a gap."""
        return self.contiguous and not self.log_url.startswith("kafka://")

    def of(self, kind: StreamKind, cls: type[E]) -> list[tuple[Position, E]]:
        """The decoded events of type `cls` in stream `kind`, with their positions."""
        return [(p, e) for p, e in self.events.get(kind, []) if isinstance(e, cls)]

    @property
    def batches(self) -> list[tuple[Position, BatchFormed]]:
        return self.of(StreamKind.EVENTS, BatchFormed)

    @property
    def announced(self) -> list[tuple[Position, WeightVersionAnnounced]]:
        return self.of(StreamKind.WEIGHTS, WeightVersionAnnounced)

    def row_of(self, position: LogPosition, sample_id: str) -> SampleRow | None:
        """The row of `sample_id` in the record at `position` (a BatchFormed entry), if there."""
        return next((r for r in self.rows_at.get(as_position(position), [])
                     if r.sample_id == sample_id), None)

    def rows_by_sample(self) -> dict[str, list[SampleRow]]:
        out: dict[str, list[SampleRow]] = defaultdict(list)
        for row in self.rows:
            out[row.sample_id].append(row)
        return out


async def load_run(log: Log, run_id: str) -> RunRecords:
    """Read every stream of `run_id`; raises AuditInputError if the run has no events stream or
    no RunStarted in it (an unknown run id, or a log that is not this run's)."""
    check_run_id(run_id)
    streams = RunStreams(run_id)
    records: dict[StreamKind, list[Record]] = {}
    contiguous = True
    for kind, name in streams.all().items():
        try:
            records[kind] = await log.read_all(name)
            contiguous = contiguous and await log.contiguous(name)
        except StreamNotFoundError:
            records[kind] = []
    if not records[StreamKind.EVENTS]:
        raise AuditInputError(f"run {run_id!r} has no events in {log.url} (unknown run id, or "
                              f"the wrong --log?)")
    undecodable: list[Undecodable] = []
    events: dict[StreamKind, list[tuple[Position, Event]]] = {}
    for kind, recs in records.items():
        if kind is not StreamKind.TRAJECTORIES:
            events[kind] = _decode_events(recs, kind, undecodable)
    started = next((e for _, e in events[StreamKind.EVENTS] if isinstance(e, RunStarted)), None)
    if started is None:
        raise AuditInputError(f"run {run_id!r}: no RunStarted event in {streams.events} "
                              f"({log.url}), so its config and policy are unknown")
    rows_at = _decode_trajectories(records[StreamKind.TRAJECTORIES], undecodable)
    rows = [r for rows in rows_at.values() for r in rows]
    rows_at |= await _foreign_rows(log, events[StreamKind.EVENTS], streams.trajectories)
    base, inherited = await _inherited_versions(log, started)
    return RunRecords(run_id=run_id, log_url=log.url, ctx=context_from_event(started),
                      started=started, records=records, events=events, rows=rows,
                      rows_at=rows_at, undecodable=undecodable, base_version=base,
                      inherited_versions=inherited, contiguous=contiguous)


async def _foreign_rows(log: Log, events: list[tuple[Position, Event]],
                        own: str) -> dict[Position, list[SampleRow]]:
    """Rows of other runs' trajectory records that this run's batches trained on."""
    foreign = {p.stream for _, e in events if isinstance(e, BatchFormed)
               for p in e.positions} - {own}
    out: dict[Position, list[SampleRow]] = {}
    for stream in sorted(foreign):
        with contextlib.suppress(StreamNotFoundError):  # the positions check reports them
            out |= _decode_trajectories(await log.read_all(stream), [])
    return out


async def _inherited_versions(log: Log, started: RunStarted) -> tuple[int, frozenset[int]]:
    """A fork's first version, and the parent's announced versions up to it."""
    parent = started.parent
    if parent is None or parent.relation != "fork":
        return 0, frozenset()
    try:
        records = await log.read_all(RunStreams(parent.run_id).weights)
    except StreamNotFoundError:
        return parent.version, frozenset()
    return parent.version, frozenset(
        e.version for _, e in _decode_events(records, StreamKind.WEIGHTS, [])
        if isinstance(e, WeightVersionAnnounced) and e.version <= parent.version)


def _decode_events(records: list[Record], kind: StreamKind,
                   undecodable: list[Undecodable]) -> list[tuple[Position, Event]]:
    out = []
    for record in records:
        try:
            out.append((record.position, decode_event(record.value, kind.value)))
        except DecodeError as error:
            undecodable.append(Undecodable(position=record.position,
                                           reason_code=error.reason_code, what=str(error)))
    return out


def _decode_trajectories(records: list[Record],
                         undecodable: list[Undecodable]) -> dict[Position, list[SampleRow]]:
    out: dict[Position, list[SampleRow]] = {}
    for record in records:
        try:
            batch = decode_trajectory_record(record)
        except DecodeError as error:
            undecodable.append(Undecodable(position=record.position,
                                           reason_code=error.reason_code, what=str(error)))
            continue
        out[record.position] = _rows(record, batch)
    return out


def _rows(record: Record, batch: pa.RecordBatch) -> list[SampleRow]:
    cols = {name: batch[name].to_pylist() for name in (
        "sample_id", "group_id", "prompt_id", "producer_id", "policy_version",
        "response_versions", "loss_mask")}
    started = batch["started_at"].cast(pa.int64()).to_pylist()
    finished = batch["finished_at"].cast(pa.int64()).to_pylist()
    return [SampleRow(
        sample_id=cols["sample_id"][i], group_id=cols["group_id"][i],
        prompt_id=cols["prompt_id"][i], producer_id=cols["producer_id"][i],
        position=record.position, policy_version=cols["policy_version"][i],
        response_versions=tuple(cols["response_versions"][i]),
        loss_mask=tuple(cols["loss_mask"][i]), started_at_us=started[i],
        finished_at_us=finished[i], arrived_ms=record.timestamp_ms)
        for i in range(batch.num_rows)]
