"""`BatchFormer`: arriving trajectory records judged by the staleness policy and gathered into the
next batch, with everything the batch's transaction must record.

Records are judged in the order they are added (each partition in log order; the trainer's
`TrajectoryReader` decides how partitions interleave), against the version the next step trains
(the trainer's version does not change while a batch gathers). A record is one GRPO group or
several whole groups; the policy judges a group together (`judge_group`). The batch closes as
soon as it holds `batch_size` samples; records after that stay unjudged for the next batch. So in
every partition p, every record before `next_offsets[p]` is decided (in this batch, or rejected
with an event in the same transaction) and none after it is: committing every partition's
`next_offsets` with the batch, in one transaction, is exactly once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import msgspec
import numpy as np
import pyarrow as pa

from streamrl.log import Record
from streamrl.schemas import LogPosition, Rejected, Staleness
from streamrl.staleness import SampleInfo, Verdict

DUPLICATE = "duplicate"  # a sample id already trained or already in this batch


class GroupJudge(Protocol):
    """What the former asks of a staleness policy (a `StalenessPolicy`, or a wrapper of one)."""

    def judge_group(self, samples: Sequence[SampleInfo], trainer_version: int,
                    now_ms: int) -> tuple[Verdict, ...]: ...


class FormedBatch(msgspec.Struct, kw_only=True):
    rows: list[pa.RecordBatch]  # kept rows of each record, in log order
    sample_ids: list[str]
    positions: list[LogPosition]  # one per sample: the record that holds it
    weights: list[float]  # the policy's loss weight per sample
    lags: list[int]
    rejected: list[Rejected]
    requeue: list[str]  # group ids whose prompt goes back to the prompts stream
    next_offsets: dict[int, int]  # partition -> the trajectories offset to commit with this batch

    @property
    def staleness(self) -> Staleness:
        lags = [max(lag, 0) for lag in self.lags] or [0]
        return Staleness(min=min(lags), max=max(lags), mean=float(np.mean(lags)))


def sample_infos(record: Record, batch: pa.RecordBatch) -> list[SampleInfo]:
    versions = batch["response_versions"].to_pylist()
    policy = batch["policy_version"].to_pylist()
    finished = batch["finished_at"].cast(pa.int64()).to_pylist()  # microseconds
    out = []
    for i, (sid, gid, pid) in enumerate(zip(batch["sample_id"].to_pylist(),
                                            batch["group_id"].to_pylist(),
                                            batch["prompt_id"].to_pylist(), strict=True)):
        v = versions[i] or [policy[i]]
        out.append(SampleInfo(
            sample_id=sid, group_id=gid, prompt_id=pid, policy_version=policy[i],
            min_version=min(v), max_version=max(v), finished_at_ms=finished[i] // 1000,
            arrived_at_ms=record.timestamp_ms, position=tuple(record.position)))
    return out


class BatchFormer:
    def __init__(self, policy: GroupJudge, batch_size: int, run_id: str,
                 trained: set[str], next_offsets: dict[int, int],
                 rejected: set[str] | None = None) -> None:
        self.policy = policy
        self.batch_size = batch_size
        self.run_id = run_id
        self.trained = trained  # every sample id in a BatchFormed so far (dedup after restarts)
        self.rejected = rejected or set()  # sample ids whose rejection is already committed
        self._reset(next_offsets)

    def _reset(self, next_offsets: dict[int, int]) -> None:
        self.batch = FormedBatch(rows=[], sample_ids=[], positions=[], weights=[], lags=[],
                                 rejected=[], requeue=[], next_offsets=dict(next_offsets))

    @property
    def ready(self) -> bool:
        return len(self.batch.sample_ids) >= self.batch_size

    def add(self, record: Record, batch: pa.RecordBatch | None, version: int, now_ms: int) -> None:
        """Judge one record (None: it was dead-lettered) against `version`."""
        assert not self.ready, "take() the full batch before adding more"
        self.batch.next_offsets[record.partition] = record.offset + 1
        if batch is None:
            return
        infos = sample_infos(record, batch)
        verdicts = self._judge(infos, version, now_ms)
        keep = [v.action == "keep" for v in verdicts]
        for info, verdict in zip(infos, verdicts, strict=True):
            if verdict.action == "keep":
                self.batch.sample_ids.append(info.sample_id)
                self.batch.positions.append(LogPosition(*record.position))
                self.batch.weights.append(verdict.weight)
                self.batch.lags.append(info.lag(version))
                continue
            self.batch.rejected.append(Rejected(
                run_id=self.run_id, subject=info.sample_id, reason_code=verdict.reason_code,
                detail=verdict.detail))
            if verdict.action == "requeue" and info.group_id not in self.batch.requeue:
                self.batch.requeue.append(info.group_id)
        if any(keep):
            self.batch.rows.append(batch.filter(pa.array(keep)))

    def _judge(self, infos: list[SampleInfo], version: int, now_ms: int) -> list[Verdict]:
        by_group: dict[str, list[int]] = defaultdict(list)
        for i, info in enumerate(infos):
            by_group[info.group_id].append(i)
        verdicts: list[Verdict] = [Verdict.keep()] * len(infos)
        seen = self.trained | set(self.batch.sample_ids)
        for rows in by_group.values():
            group = [infos[i] for i in rows]
            dupes = [s.sample_id for s in group if s.sample_id in seen]
            if all(s.sample_id in self.rejected for s in group):
                judged = [Verdict(action="drop")] * len(group)  # decided before: no new event
            elif dupes:
                detail = f"already trained or batched: {', '.join(dupes[:4])}"
                judged = [Verdict.drop(DUPLICATE, detail)] * len(group)
            else:
                judged = list(self.policy.judge_group(group, version, now_ms))
            for i, verdict in zip(rows, judged, strict=True):
                verdicts[i] = verdict
        return verdicts

    @property
    def has_decisions(self) -> bool:
        """Rejections (and requeues) judged but not yet committed."""
        return bool(self.batch.rejected or self.batch.requeue)

    def take_decisions(self) -> tuple[list[Rejected], list[str], dict[int, int]]:
        """The pending rejections and requeues, to commit before a batch is full (else a run
        whose every remaining sample is stale would wait forever for its requeued prompts), and
        the offsets that may be committed with them: per partition, before the first record still
        holding a kept sample. Records between it and the read position are judged again after a
        restart; their committed rejections are recognized (`rejected`) and not repeated."""
        commit = dict(self.batch.next_offsets)
        for p in self.batch.positions:
            commit[p.partition] = min(commit[p.partition], p.offset)
        decisions = (self.batch.rejected, self.batch.requeue, commit)
        self.rejected.update(r.subject for r in self.batch.rejected)
        self.batch.rejected, self.batch.requeue = [], []
        return decisions

    def take(self) -> FormedBatch:
        formed = self.batch
        self.trained.update(formed.sample_ids)
        self._reset(formed.next_offsets)
        return formed
