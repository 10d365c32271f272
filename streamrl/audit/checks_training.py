"""Checks on what was trained: each sample at most once, at the position recorded for it, within
the run's staleness policy, and never one whose record went to the dead-letter stream."""

from __future__ import annotations

import math
from collections import defaultdict

from streamrl.audit.lineage import RunRecords, SampleRow, as_position
from streamrl.audit.report import CheckResult, first, where_position
from streamrl.log import Position
from streamrl.schemas import BatchFormed, DeadLetter
from streamrl.staleness import SampleInfo, build_policy
from streamrl.streams import StreamKind


def trained_samples(run: RunRecords) -> list[tuple[BatchFormed, int, Position, str]]:
    """(batch, index in batch, recorded position, sample id) of every trained sample."""
    return [(batch, i, as_position(p), sid) for _, batch in run.batches
            for i, (p, sid) in enumerate(zip(batch.positions, batch.sample_ids, strict=True))]


def check_trained_once(run: RunRecords) -> CheckResult:
    result = CheckResult(name="trained_once", title="every sample trained at most once",
                         num_checked=0)
    batches_of: dict[str, list[str]] = defaultdict(list)
    for batch, _, _, sid in trained_samples(run):
        batches_of[sid].append(batch.batch_id)
    result.num_checked = len(batches_of)
    for sid, batch_ids in batches_of.items():
        if len(batch_ids) > 1:
            result.fail("sample_trained_twice",
                        f"sample {sid} was trained {len(batch_ids)} times, in batches "
                        f"{first(batch_ids)}", f"sample {sid}")
    return result


def check_positions(run: RunRecords) -> CheckResult:
    result = CheckResult(name="positions", title="every trained sample is at its recorded position",
                         num_checked=0)
    for batch, _, position, sid in trained_samples(run):
        result.num_checked += 1
        where = where_position(*position)
        rows = run.rows_at.get(position)
        if rows is None:
            result.fail("position_missing", f"{batch.batch_id} trained sample {sid} from "
                        f"{where}, which holds no decodable trajectory record", where)
        elif sid not in {r.sample_id for r in rows}:
            result.fail("position_mismatch", f"{batch.batch_id} trained sample {sid} from "
                        f"{where}, but that record holds {first(r.sample_id for r in rows)}",
                        where)
    return result


def _sample_info(row: SampleRow) -> SampleInfo:
    return SampleInfo(sample_id=row.sample_id, group_id=row.group_id, prompt_id=row.prompt_id,
                      policy_version=row.policy_version, min_version=row.min_version,
                      max_version=row.max_version, finished_at_ms=row.finished_at_us // 1000,
                      arrived_at_ms=row.arrived_ms, position=tuple(row.position))


def check_staleness(run: RunRecords) -> CheckResult:
    """Re-judge every trained sample with the run's policy at the batch's version. The policy's
    clock (`now_ms`, which only time windows read) is taken as the record's arrival time: the
    trainer judged it at or after that moment, so a sample too old even then was surely stale."""
    policy = build_policy(run.ctx.config.staleness)
    result = CheckResult(name="staleness", title="no trained sample broke the staleness policy",
                         num_checked=0)
    result.notes.append(f"policy {run.ctx.config.staleness.policy} "
                        f"{dict(run.ctx.config.staleness.options)}")
    for _, batch in run.batches:
        weights = list(batch.sample_weights) or [1.0] * len(batch.sample_ids)
        lags = []
        for position, sid, weight in zip(batch.positions, batch.sample_ids, weights, strict=True):
            row = run.row_of(position, sid)
            if row is None:
                continue  # reported by the positions check
            result.num_checked += 1
            lag = batch.policy_version - row.min_version
            lags.append(max(lag, 0))
            verdict = policy.judge(_sample_info(row), batch.policy_version, row.arrived_ms)
            if verdict.action != "keep":
                result.fail("stale_sample_trained",
                            f"{batch.batch_id} trained {sid} at version {batch.policy_version} "
                            f"with lag {lag} (oldest token version {row.min_version}); the "
                            f"policy says {verdict.action} ({verdict.reason_code}: "
                            f"{verdict.detail})", f"sample {sid}")
            elif not math.isclose(verdict.weight, weight, rel_tol=1e-6, abs_tol=1e-9):
                result.fail("sample_weight_mismatch",
                            f"{batch.batch_id} trained {sid} with loss weight {weight}; the "
                            f"policy gives {verdict.weight} at lag {lag}", f"sample {sid}")
        recorded = batch.staleness
        if lags and (recorded.min, recorded.max) != (min(lags), max(lags)):
            result.fail("staleness_misrecorded",
                        f"{batch.batch_id} records staleness {recorded.min}..{recorded.max}, "
                        f"its samples' lags are {min(lags)}..{max(lags)}",
                        f"version {batch.policy_version}")
    return result


def check_dead_letters(run: RunRecords) -> CheckResult:
    letters = run.of(StreamKind.DLQ, DeadLetter)
    result = CheckResult(name="dead_letters", title="no trained sample was dead-lettered",
                         num_checked=len(letters))
    sources: dict[Position, DeadLetter] = {}
    for _, letter in letters:
        if isinstance(letter, DeadLetter) and letter.source is not None:
            sources[as_position(letter.source)] = letter
    for batch, _, position, sid in trained_samples(run):
        if (letter := sources.get(position)) is not None:
            result.fail("dead_lettered_sample_trained",
                        f"{batch.batch_id} trained {sid} from {where_position(*position)}, which "
                        f"{letter.component} dead-lettered ({letter.reason_code})",
                        where_position(*position))
    return result
