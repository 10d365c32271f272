"""A fork's position in its parent's log: what the parent had done at the fork version V, what it
still had to do, and how the fork takes that over.

The parent's trainer judges each trajectories partition's records strictly in log order, and a
batch closes on the record that fills it. So at version V (made by the batch with policy_version
V-1) it had judged exactly the records before `O_V`, per partition: the offsets committed with
that batch (`BatchFormed.consumed_to`; in runs recorded before it, the offset after the batch's
last position), and none at V = 0. Each sample there was trained into a version <= V, or rejected
by then. Every prompt of the
parent is then in one of these states, decided per prompt id (a requeued prompt has several
records; they are one task):

- trained: a group of it is in a batch before V. Done; the fork never sees it again.
- dropped: every record of it was judged before O_V and none was trained (a staleness drop
  without requeue). Done, as the parent had decided.
- carried: its first record not judged at V has a trajectory after O_V whose every token was
  sampled by a version <= V, i.e. by weights the fork shares. The fork trains that group as the
  parent could have: the trajectory is copied into the fork's stream (same tokens, logprobs,
  versions, reward), renamed to a prompt record of the fork, and trained before anything new.
- pending: anything else (never handed out, in flight with tokens from the parent's future
  weights > V, or filtered: filters record no version). The fork's producers generate it.

The fork's prompts stream holds the carried prompts first, with the producers' committed position
past them, then the pending ones in the parent's order. Carried rows are renamed (`run_id`,
`group_id`, `sample_id`) so that every id names a record of the fork's own prompts stream: ids
stay unique (a producer of the fork cannot mint a carried group's id again) and a requeue reads
the right prompt. `ForkPoint.carried` maps each fork group id to the parent's.
"""

from __future__ import annotations

from collections import defaultdict

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from streamrl.consumers.trainer.reader import TrajectoryReader
from streamrl.consumers.trainer.resume import History
from streamrl.log import Append, Log, Record, StreamPartition
from streamrl.recipe.context import PRODUCER_GROUP, ForkPoint, RunContext
from streamrl.records import decode_trajectory_record
from streamrl.schemas import (
    DecodeError,
    Prompt,
    decode_event,
    encode_event,
    encode_trajectories,
)
from streamrl.schemas.ids import group_id_for, sample_id_for
from streamrl.schemas.integrity import digest_headers


class ForkPosition(msgspec.Struct, kw_only=True):
    version: int
    trajectories_offsets: dict[int, int]  # O_V per partition: records before it judged at V
    carried: list[tuple[Prompt, pa.RecordBatch]]  # (prompt, the group's rows), parent order
    pending: list[Prompt]  # prompts the fork's producers generate, parent order
    num_trained: int  # prompts trained by the parent before V
    num_dropped: int  # prompts the parent dropped before V
    num_undecodable: int  # parent records that do not decode (its trainer dead-lettered them)

    def point(self, num_partitions: int) -> ForkPoint:
        """The `ForkPoint` recorded in the fork's RunStarted; carried prompt i goes to partition
        i % num_partitions at offset i // num_partitions of the fresh prompts stream."""
        n = num_partitions
        carried = {group_id_for(i % n, i // n): rows["group_id"][0].as_py()
                   for i, (_, rows) in enumerate(self.carried)}
        offsets = self.trajectories_offsets
        return ForkPoint(version=self.version, trajectories_offset=offsets.get(0, 0),
                         trajectories_offsets=tuple(offsets.get(p, 0)
                                                    for p in range(max(offsets, default=0) + 1)),
                         carried=carried,
                         num_carried_samples=sum(rows.num_rows for _, rows in self.carried))


def judged_offsets(history: History, version: int) -> dict[int, int]:
    """O_V per trajectories partition: where the parent's trainer stood after the batch that made
    `version` (absent: nothing judged there)."""
    if version == 0:
        return {}
    [batch] = [b for b in history.batches if b.policy_version == version - 1]
    if batch.consumed_to:
        return {p.partition: p.offset for p in batch.consumed_to}
    last = max(batch.positions, key=lambda p: p.offset)  # one partition: the batch's last record
    return {last.partition: last.offset + 1}


async def plan_position(log: Log, parent: RunContext, history: History,
                        version: int) -> ForkPosition:
    offsets = judged_offsets(history, version)
    trained_before = {sid for b in history.batches if b.policy_version < version
                      for sid in b.sample_ids}
    judged: set[str] = set()  # group ids judged at V
    trained_prompts: set[str] = set()
    candidates: dict[str, pa.RecordBatch] = {}  # group id -> rows, first occurrence after O_V
    num_undecodable = 0
    for record in await _arrival_order(log, parent.streams.trajectories):
        try:
            data = decode_trajectory_record(record)
        except DecodeError:
            num_undecodable += 1
            continue
        for group_id in dict.fromkeys(data["group_id"].to_pylist()):
            rows = data.filter(pc.equal(data["group_id"], group_id))
            if record.offset < offsets.get(record.partition, 0):
                judged.add(group_id)
                if trained_before & set(rows["sample_id"].to_pylist()):
                    trained_prompts.add(rows["prompt_id"][0].as_py())
            elif group_id not in candidates and _sampled_by(rows) <= version:
                candidates[group_id] = rows
    prompts = await _prompt_records(log, parent)
    position = ForkPosition(version=version, trajectories_offsets=offsets, carried=[], pending=[],
                            num_trained=len(trained_prompts), num_dropped=0,
                            num_undecodable=num_undecodable)
    for prompt_id, records in prompts.items():
        if prompt_id in trained_prompts:
            continue
        open_records = [(gid, p) for gid, p in records if gid not in judged]
        if not open_records:
            position.num_dropped += 1
        elif carried := [(p, candidates[gid]) for gid, p in open_records if gid in candidates]:
            position.carried.append(carried[0])
        else:
            position.pending.append(open_records[0][1])
    order = {gid: i for i, gid in enumerate(candidates)}  # candidates keep log order
    position.carried.sort(key=lambda pr: order[pr[1]["group_id"][0].as_py()])
    return position


async def _arrival_order(log: Log, stream: str) -> list[Record]:
    """Every record of `stream`, its partitions merged as the trainer's reader merges a recorded
    stream (by (timestamp, partition, offset), each partition in log order)."""
    return await TrajectoryReader(log, stream, finite=True).take({})


def _sampled_by(rows: pa.RecordBatch) -> int:
    """The newest weight version that sampled any token of these rows."""
    versions = pc.list_flatten(rows["response_versions"])
    newest = pc.max(versions).as_py() if len(versions) else None
    return max(newest or 0, pc.max(rows["policy_version"]).as_py())


async def _prompt_records(log: Log, parent: RunContext) -> dict[str, list[tuple[str, Prompt]]]:
    """prompt id -> [(group id, Prompt)] for every record of the parent's prompts stream, in the
    order the parent handed them out (originals round-robin over partitions, then requeues)."""
    records = sorted(await log.read_all(parent.streams.prompts),
                     key=lambda r: (r.offset, r.partition))
    out: dict[str, list[tuple[str, Prompt]]] = defaultdict(list)
    for record in records:
        prompt = decode_event(record.value, "prompts")
        out[prompt.prompt_id].append((group_id_for(record.partition, record.offset), prompt))
    return out


async def write_position(log: Log, ctx: RunContext, position: ForkPosition) -> None:
    """Write the fork's prompts (carried first, then pending), commit the producers' position
    past the carried ones, and append the carried groups, renamed, to its trajectories."""
    assert ctx.fork is not None, "write_position is for forks"
    stream = ctx.streams.prompts
    num_partitions = await log.num_partitions(stream)
    prompts = [p for p, _ in position.carried] + position.pending
    appends = [Append(stream=stream, partition=i % num_partitions, key=p.prompt_id.encode(),
                      value=encode_event(Prompt(
                          run_id=ctx.run_id, prompt_id=p.prompt_id, tokens=p.tokens, text=p.text,
                          metadata=p.metadata, num_samples=p.num_samples)))
               for i, p in enumerate(prompts)]
    positions = await log.append_many(appends)
    expected = position.point(num_partitions).carried
    actual = [group_id_for(pos.partition, pos.offset) for pos in positions[:len(expected)]]
    if actual != list(expected):  # a fresh stream's plain appends start at 0, contiguous
        raise RuntimeError(f"the fork's prompts landed at {actual[:4]}…, expected "
                           f"{list(expected)[:4]}…: was {stream} not empty?")
    committed: dict[StreamPartition, int] = {}
    for pos in positions[:len(expected)]:
        committed[StreamPartition(stream, pos.partition)] = pos.offset + 1
    if committed:
        await log.commit(PRODUCER_GROUP, committed)
    await log.append_many([
        Append(stream=ctx.streams.trajectories, key=group_id.encode(), value=value,
               headers=digest_headers(value))
        for group_id, (_, rows) in zip(expected, position.carried, strict=True)
        for value in [encode_trajectories(_renamed(rows, ctx.run_id, group_id))]])


def _renamed(rows: pa.RecordBatch, run_id: str, group_id: str) -> pa.RecordBatch:
    """The parent's rows of one group under the fork's run and group id; nothing else changes."""
    n = rows.num_rows
    sample_ids = [sample_id_for(group_id, k) for k in rows["sample_index"].to_pylist()]
    replaced = {"run_id": pa.array([run_id] * n, pa.string()),
                "group_id": pa.array([group_id] * n, pa.string()),
                "sample_id": pa.array(sample_ids, pa.string())}
    columns = [replaced.get(name, rows[name]) for name in rows.schema.names]
    return pa.RecordBatch.from_arrays(columns, schema=rows.schema)
