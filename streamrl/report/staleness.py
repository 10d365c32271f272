"""The staleness report of a run, computed from its log alone (`staleness_summary(run)`).

Definitions (the same the trainer and the audit use):
- a trained sample's lag is `batch.policy_version - min(response_versions)` (the oldest weights
  that sampled any of its tokens; the start version for an empty response);
- a trained token's lag is `batch.policy_version - response_versions[t]`, over the tokens the
  loss trains on (`loss_mask` True);
- percentiles are numpy's default (linear interpolation);
- throughput counts trajectory rows per producer by when generation finished (`finished_at`),
  in buckets of `bucket_s` seconds from the earliest `started_at` of the run;
- version lag over time is each batch's mean and max sample lag at the batch's event time;
- train/rollout mismatch per version is what the trainer measured at that step (`TrainStep`
  metrics `mismatch_*`, consumers/trainer/correction.py): mean |log prox - log mu|, the k3
  estimate of KL(mu || prox), and the correction policy's rejected fraction when one is named.

Which samples were generated: the rows of every trajectory stream the run's trainer read. A run's
own stream; for a derived run (a counterfactual or a `replay --record`, which re-train recorded
samples) the stream its batches point into: the parent's, or another run's given with
`--trajectories` (resolved by `streamrl.audit.lineage.load_run`). A fork's own stream starts with
the parent's samples it carried over (`num_carried`): they count as generated (the fork judged
them) but not in throughput (its producers did not make them); its times count from its
RunStarted or its first own sample, whichever is earlier. A derived run's batches happen
when it was replayed, not when the samples were made, so their times count from its RunStarted.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import msgspec
import numpy as np

from streamrl.audit.lineage import RunRecords, SampleRow
from streamrl.schemas import Rejected, TrainStep
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


class Mismatch(msgspec.Struct, kw_only=True):
    """One training step's train/rollout mismatch (its TrainStep metrics)."""

    version: int
    abs_logprob: float  # mean |log prox - log mu| over trained tokens
    kl: float  # k3 estimate of KL(rollout || train)
    rejected_fraction: float | None = None  # truncated or masked by the correction; None: none

    @classmethod
    def of(cls, step: TrainStep) -> Mismatch | None:
        m = step.metrics
        if "mismatch_abs_logprob" not in m:
            return None  # a run recorded before the trainer measured it
        return cls(version=step.version, abs_logprob=m["mismatch_abs_logprob"],
                   kl=m.get("mismatch_kl", 0.0),
                   rejected_fraction=m.get("mismatch_rejected_fraction"))


class StalenessSummary(msgspec.Struct, kw_only=True):
    run_id: str
    policy: str
    policy_options: dict[str, object]
    num_generated: int  # rows of the trajectory streams the run read (see the module docstring)
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
    trajectory_streams: list[str] = []  # where the generated rows are
    num_carried: int = 0  # a fork's samples carried over from its parent (in num_generated)
    mismatch: list[Mismatch] = []  # per trained version, in version order


def trained_rows(run: RunRecords) -> list[tuple[int, SampleRow]]:
    """(version trained at, row) of every trained sample, in batch order."""
    out = []
    for _, batch in run.batches:
        for position, sid in zip(batch.positions, batch.sample_ids, strict=True):
            if (row := run.row_of(position, sid)) is not None:
                out.append((batch.policy_version, row))
    return out


def generated_rows(run: RunRecords) -> list[SampleRow]:
    """The rows of the run's own trajectories stream, then those of the other runs' streams its
    batches trained from (load_run read those whole), in log order."""
    own = run.streams.trajectories
    return run.rows + [r for position, rows in run.rows_at.items() if position.stream != own
                       for r in rows]


def carried_groups(run: RunRecords) -> set[str]:
    """A fork's group ids of the samples it carried over from its parent."""
    return set(run.ctx.fork.carried) if run.ctx.fork is not None else set()


def is_derived(run: RunRecords) -> bool:
    """A re-training of recorded samples (counterfactual, replay --record), not a live run."""
    parent = run.started.parent
    return parent is not None and parent.relation != "fork"


def staleness_summary(run: RunRecords, *, bucket_s: float | None = None) -> StalenessSummary:
    generated = generated_rows(run)
    carried = carried_groups(run)
    made_here = [r for r in generated if r.group_id not in carried]
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
        num_generated=len(generated), num_trained=len(trained),
        num_unused=_unused(generated, {row.sample_id for _, row in trained}, rejected),
        per_sample=Distribution.of(sample_lags), per_token=Distribution.of(token_lags),
        rejected_by_reason=dict(Counter(e.reason_code for e in rejected).most_common()),
        throttled_by_producer=dict(Counter(e.subject for e in rejected
                                           if e.reason_code == THROTTLED).most_common()),
        dead_letters_by_reason=dict(dead.most_common()),
        throughput=throughput(run, made_here, bucket_s),
        batches=batch_lags(run, made_here, trained),
        trajectory_streams=list(dict.fromkeys(r.position.stream for r in generated)),
        num_carried=len(generated) - len(made_here),
        mismatch=sorted((m for _, e in run.of(StreamKind.EVENTS, TrainStep)
                         if (m := Mismatch.of(e)) is not None), key=lambda m: m.version))


def _unused(rows: list[SampleRow], trained: set[str], rejected: list[Rejected]) -> int:
    """Rejected subjects are sample ids (trainer), group ids (filters) or producer ids."""
    subjects = {e.subject for e in rejected}
    return sum(1 for r in rows if r.sample_id not in trained
               and r.sample_id not in subjects and r.group_id not in subjects)


def run_start_us(run: RunRecords, rows: list[SampleRow]) -> int:
    """When the first of `rows` started; for a fork, no later than its RunStarted (it trains
    its carried samples before its own producers start)."""
    started_us = run.started.time_ms * 1000
    first = min((r.started_at_us for r in rows), default=started_us)
    return min(first, started_us) if run.ctx.fork is not None else first


def throughput(run: RunRecords, rows: list[SampleRow], bucket_s: float | None) -> Throughput:
    """Rows finished per producer over time; `rows` are the samples made for this run (a
    derived run's: its parent's producers, the arrival the replay re-enacted)."""
    t0 = run_start_us(run, rows)
    end = max((r.finished_at_us for r in rows), default=t0)
    span_s = max((end - t0) / 1e6, 1e-3)
    if bucket_s is None:  # about 30 buckets, a round number of seconds when the run is long
        bucket_s = span_s / 30 if span_s < 30 else float(math.ceil(span_s / 30))
    num = int(span_s // bucket_s) + 1
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * num)
    for r in rows:
        counts[r.producer_id][int((r.finished_at_us - t0) / 1e6 // bucket_s)] += 1
    return Throughput(bucket_s=bucket_s, bucket_starts_s=[i * bucket_s for i in range(num)],
                      rows=dict(sorted(counts.items())),
                      total={p: sum(c) for p, c in sorted(counts.items())})


def batch_lags(run: RunRecords, rows: list[SampleRow],
               trained: list[tuple[int, SampleRow]]) -> list[BatchLag]:
    lags_of = {row.sample_id: version - row.min_version for version, row in trained}
    t0 = (run.started.time_ms * 1000 if is_derived(run) else run_start_us(run, rows)) / 1e6
    out = []
    for _, batch in run.batches:
        lags = [lags_of[s] for s in batch.sample_ids if s in lags_of]
        out.append(BatchLag(batch_id=batch.batch_id, policy_version=batch.policy_version,
                            time_s=batch.time_ms / 1000 - t0, num_samples=len(lags),
                            mean_lag=float(np.mean(lags)) if lags else 0.0,
                            max_lag=max(lags, default=0)))
    return out
