"""The staleness report of a run, computed from its log alone (`staleness_summary(run)`).

Definitions (the same the trainer and the audit use):
- a trained sample's lag is `batch.policy_version - min(response_versions)` (the oldest weights
  that sampled any of its tokens; the start version for an empty response);
- a trained token's lag is `batch.policy_version - response_versions[t]`, over the tokens the
  loss trains on (`loss_mask` True);
- percentiles are numpy's default (linear interpolation);
- throughput counts trajectory rows per producer by when generation finished (`finished_at`),
  in buckets of `bucket_s` seconds from the earliest `started_at` of the run;
- version lag over time is each batch's mean and max sample lag at the batch's event time.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import msgspec
import numpy as np

from schemas import Rejected
from streamrl.audit.lineage import RunRecords, SampleRow
from streamrl.staleness.base import THROTTLED
from streamrl.streams import StreamKind


class Distribution(msgspec.Struct, kw_only=True):
    count: int
    mean: float
    p50: float
    p99: float
    min: int
    max: int
    histogram: dict[str, int]  # lag (as a string: JSON keys) -> count

    @classmethod
    def of(cls, values: list[int]) -> Distribution:
        if not values:
            return cls(count=0, mean=0.0, p50=0.0, p99=0.0, min=0, max=0, histogram={})
        arr = np.asarray(values)
        hist = Counter(values)
        return cls(count=len(values), mean=float(arr.mean()),
                   p50=float(np.percentile(arr, 50)), p99=float(np.percentile(arr, 99)),
                   min=int(arr.min()), max=int(arr.max()),
                   histogram={str(k): hist[k] for k in sorted(hist)})


class BatchLag(msgspec.Struct, kw_only=True):
    batch_id: str
    policy_version: int
    time_s: float  # since the run's first sample started
    num_samples: int
    mean_lag: float
    max_lag: int


class Throughput(msgspec.Struct, kw_only=True):
    bucket_s: float
    bucket_starts_s: list[float]
    rows: dict[str, list[int]]  # producer id -> rows finished in each bucket
    total: dict[str, int]  # producer id -> rows overall


class StalenessSummary(msgspec.Struct, kw_only=True):
    run_id: str
    policy: str
    policy_options: dict[str, object]
    num_generated: int  # trajectory rows in the log
    num_trained: int
    # Generated but neither trained nor rejected: still unjudged in the log when the run ended.
    num_unused: int
    per_sample: Distribution
    per_token: Distribution
    rejected_by_reason: dict[str, int]  # Rejected events by reason code (throttles included)
    throttled_by_producer: dict[str, int]  # throttle stretches per producer
    dead_letters_by_reason: dict[str, int]
    throughput: Throughput
    batches: list[BatchLag]


def trained_rows(run: RunRecords) -> list[tuple[int, SampleRow]]:
    """(version trained at, row) of every trained sample, in batch order."""
    out = []
    for _, batch in run.batches:
        for position, sid in zip(batch.positions, batch.sample_ids, strict=True):
            if (row := run.row_of(position, sid)) is not None:
                out.append((batch.policy_version, row))
    return out


def staleness_summary(run: RunRecords, *, bucket_s: float | None = None) -> StalenessSummary:
    trained = trained_rows(run)
    sample_lags = [version - row.min_version for version, row in trained]
    token_lags = [version - v for version, row in trained
                  for v, m in zip(row.response_versions, row.loss_mask, strict=True) if m]
    rejected = [e for _, e in run.of(StreamKind.EVENTS, Rejected)]
    dead = Counter(e.reason_code for _, e in run.events.get(StreamKind.DLQ, [])
                   if hasattr(e, "reason_code"))
    staleness = run.ctx.config.staleness
    return StalenessSummary(
        run_id=run.run_id, policy=staleness.policy, policy_options=dict(staleness.options),
        num_generated=len(run.rows), num_trained=len(trained),
        num_unused=_unused(run, {row.sample_id for _, row in trained}, rejected),
        per_sample=Distribution.of(sample_lags), per_token=Distribution.of(token_lags),
        rejected_by_reason=dict(Counter(e.reason_code for e in rejected).most_common()),
        throttled_by_producer=dict(Counter(e.subject for e in rejected
                                           if e.reason_code == THROTTLED).most_common()),
        dead_letters_by_reason=dict(dead.most_common()),
        throughput=throughput(run, bucket_s), batches=batch_lags(run, trained))


def _unused(run: RunRecords, trained: set[str], rejected: list[Rejected]) -> int:
    """Rejected subjects are sample ids (trainer), group ids (filters) or producer ids."""
    subjects = {e.subject for e in rejected}
    return sum(1 for r in run.rows if r.sample_id not in trained
               and r.sample_id not in subjects and r.group_id not in subjects)


def run_start_us(run: RunRecords) -> int:
    return min((r.started_at_us for r in run.rows), default=run.started.time_ms * 1000)


def throughput(run: RunRecords, bucket_s: float | None) -> Throughput:
    t0 = run_start_us(run)
    end = max((r.finished_at_us for r in run.rows), default=t0)
    span_s = max((end - t0) / 1e6, 1e-3)
    if bucket_s is None:  # about 30 buckets, a round number of seconds when the run is long
        bucket_s = span_s / 30 if span_s < 30 else float(math.ceil(span_s / 30))
    num = int(span_s // bucket_s) + 1
    rows: dict[str, list[int]] = defaultdict(lambda: [0] * num)
    for r in run.rows:
        rows[r.producer_id][int((r.finished_at_us - t0) / 1e6 // bucket_s)] += 1
    return Throughput(bucket_s=bucket_s, bucket_starts_s=[i * bucket_s for i in range(num)],
                      rows=dict(sorted(rows.items())),
                      total={p: sum(c) for p, c in sorted(rows.items())})


def batch_lags(run: RunRecords, trained: list[tuple[int, SampleRow]]) -> list[BatchLag]:
    lags_of = {row.sample_id: version - row.min_version for version, row in trained}
    t0 = run_start_us(run) / 1e6
    out = []
    for _, batch in run.batches:
        lags = [lags_of[s] for s in batch.sample_ids if s in lags_of]
        out.append(BatchLag(batch_id=batch.batch_id, policy_version=batch.policy_version,
                            time_s=batch.time_ms / 1000 - t0, num_samples=len(lags),
                            mean_lag=float(np.mean(lags)) if lags else 0.0,
                            max_lag=max(lags, default=0)))
    return out
