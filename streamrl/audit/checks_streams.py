"""Checks that no stream lost or repeated anything.

On the file and memory logs offsets are contiguous from 0, so a gap is visible directly. On Kafka
transaction markers take offsets, so gaps are normal there and the check is semantic: nothing a
stream holds may appear twice (event ids, trajectory sample and group ids, batch ids). Prompt ids
may legitimately repeat (requeues, and datasets that ask the same question twice), so repeated
prompt ids are noted; a prompt published twice repeats its event id and fails.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from streamrl.audit.lineage import RunRecords, as_position
from streamrl.audit.report import CheckResult, DeadLetterSummary, first, where_position
from streamrl.log import Position
from streamrl.schemas import BatchFormed, DeadLetter, Prompt
from streamrl.schemas.ids import original_event_id
from streamrl.streams import StreamKind


def check_streams(run: RunRecords) -> CheckResult:
    result = CheckResult(name="streams", title="no gap or duplicate in any stream",
                         num_checked=sum(len(r) for r in run.records.values()))
    if run.contiguous_offsets:
        _offset_gaps(run, result)
    else:
        result.notes.append("Kafka: offsets are not contiguous (transaction markers); "
                            "checked for duplicates only")
    _duplicate_event_ids(run, result)
    _duplicate_trajectories(run, result)
    _duplicate_batches(run, result)
    _repeated_prompts(run, result)
    dead = {as_position(e.source) for _, e in run.of(StreamKind.DLQ, DeadLetter)
            if e.source is not None}
    for bad in run.undecodable:
        if bad.position in dead:
            continue  # refused and kept in the dlq, as it should be
        result.fail("undecodable_record", f"record cannot be decoded ({bad.reason_code}: "
                    f"{bad.what}) and is not in the dead-letter stream",
                    where_position(*bad.position))
    return result


def _offset_gaps(run: RunRecords, result: CheckResult) -> None:
    for records in run.records.values():
        expected: dict[tuple[str, int], int] = defaultdict(int)
        for record in records:
            key = (record.stream, record.partition)
            if record.offset != expected[key]:
                result.fail("offset_gap", f"offset {record.offset} follows "
                            f"{expected[key] - 1} (expected {expected[key]})",
                            where_position(*record.position))
            expected[key] = record.offset + 1


def _duplicate_event_ids(run: RunRecords, result: CheckResult) -> None:
    for events in run.events.values():
        seen: dict[str, Position] = {}
        for position, event in events:
            if (earlier := seen.get(event.event_id)) is not None:
                result.fail("duplicate_event_id", f"{type(event).__name__} with event id "
                            f"{event.event_id} was already recorded at "
                            f"{where_position(*earlier)}", where_position(*position))
            else:
                seen[event.event_id] = position


def _duplicate_trajectories(run: RunRecords, result: CheckResult) -> None:
    records_of_group: dict[str, list[Position]] = defaultdict(list)
    for position, rows in run.rows_at.items():
        for group_id in dict.fromkeys(r.group_id for r in rows):
            records_of_group[group_id].append(position)
    repeated_groups = set()
    for group_id, positions in records_of_group.items():
        if len(positions) > 1:
            repeated_groups.add(group_id)
            at = first(where_position(*p) for p in positions)
            result.fail("duplicate_group", f"group {group_id} was published "
                        f"{len(positions)} times, at {at}", where_position(*positions[1]))
    for sample_id, rows in run.rows_by_sample().items():
        if len(rows) > 1 and rows[0].group_id not in repeated_groups:
            result.fail("duplicate_sample", f"sample {sample_id} appears {len(rows)} times, at "
                        f"{first(where_position(*r.position) for r in rows)}",
                        where_position(*rows[1].position))


def _duplicate_batches(run: RunRecords, result: CheckResult) -> None:
    count = Counter(b.batch_id for _, b in run.batches)
    for position, batch in run.of(StreamKind.EVENTS, BatchFormed):
        if count[batch.batch_id] > 1:
            count[batch.batch_id] = 0  # report each id once
            result.fail("duplicate_batch_id", f"batch id {batch.batch_id} is recorded more "
                        f"than once", where_position(*position))


def _repeated_prompts(run: RunRecords, result: CheckResult) -> None:
    """Prompt ids that the driver published more than once (not as requeues) are noted, not
    failed: a dataset may hold the same question twice, and ids are the recipe's. A publish
    that really happened twice repeats its event id, which `duplicate_event_id` catches.
    Requeues are keyed by prompt id, so they can land in another partition than the original:
    compare within a prompt id, not in log order."""
    copies: dict[str, list[str]] = defaultdict(list)
    for _, prompt in run.of(StreamKind.PROMPTS, Prompt):
        copies[prompt.prompt_id].append(prompt.event_id)
    repeated = 0
    for event_ids in copies.values():
        ids = set(event_ids)
        roots = [e for e in event_ids
                 if original_event_id(e) == e or original_event_id(e) not in ids]
        repeated += len(roots) > 1
    if repeated:
        result.notes.append(f"{repeated} prompt ids were published more than once "
                            f"besides requeues (repeated questions in the dataset)")


def dead_letter_summary(run: RunRecords) -> list[DeadLetterSummary]:
    """Dead letters by (reason code, component), most frequent first: reported, not failures."""
    count = Counter((e.reason_code, e.component) for _, e in run.of(StreamKind.DLQ, DeadLetter))
    return [DeadLetterSummary(reason_code=r, component=c, count=n)
            for (r, c), n in count.most_common()]
