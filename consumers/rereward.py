"""Re-scoring a recorded trajectory stream with another reward function, into a new run, without
generating anything again:

    result = await rereward(log, "arithmetic-ci-20261125", "recipes.arithmetic.task:reward_strict",
                            new_run="arithmetic-ci-strict", runs_dir=Path("runs").absolute())

The new run is a normal run: `RunStarted(parent=RunParent(RUN, 0, "rereward"))` with the parent's
config but `rollout.reward` replaced, and a trajectories stream that holds the parent's records
in the parent's order (each record in its own partition), one record for each, with the same
rows (sample and group ids, versions, tokens, logprobs, routing) and only `run_id`, `reward` and
`reward_details` new. So GRPO groups
stay whole and `streamrl replay PARENT --trajectories NEW_RUN` trains on it as recorded arrival.
Sample and group ids still name the parent's prompt records (its prompts stream is where they
resolve); the new run has no prompts, weights or batches of its own.

The reward function is the recipe hook (`streamrl/hooks/rollout.py`: `RewardFn(RewardInput) ->
RewardOutput`), called with the input the producer gave it: the prompt (text, metadata) from the
parent's prompts stream and the response decoded the same way. It runs as in the producer: in
reward worker processes bounded by the parent's `rollout.reward_timeout_s` (a call that hangs
or raises, or returns something else, scores 0 with its status, counted in
`num_reward_failures`). The workers (`producers/rewards/sandbox.py`) are handed in by the caller
(`workers=RewardSandbox`), since a consumer never imports a producer module.

Exactly once, resumable: each page of re-scored records is appended in one transaction with the
parent position it covers (consumer group `<NEW_RUN>.rereward`), so running the same command
again after a crash, or after the parent recorded more, continues where the new stream ends. A
record that does not decode goes to the new run's dead-letter stream, in the same transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec
import numpy as np
import pyarrow as pa

from streamrl.consumers.trainer.reader import TrajectoryReader
from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.hooks.run import Tokenizer, prompt_text
from streamrl.log import Append, Log, Record, StreamPartition
from streamrl.recipe.config import RunConfig, config_from_builtins
from streamrl.recipe.context import RunContext, load_run_context, trajectory_partitions
from streamrl.recipe.rewards import RewardRecipe
from streamrl.records import decode_trajectory_record
from streamrl.schemas import (
    DeadLetter,
    DecodeError,
    LogPosition,
    Prompt,
    RunParent,
    RunStarted,
    TrajectoryDecodeError,
    decode_event,
    encode_event,
    encode_trajectories,
)
from streamrl.schemas.ids import group_id_for
from streamrl.schemas.integrity import digest_headers
from streamrl.streams import RunStreams, StreamKind, check_run_id


def progress_group(new_run: str) -> str:
    """The consumer group whose position in the parent's stream is committed with each page."""
    return f"{new_run}.rereward"


PAGE = 64  # records per transaction


class RerewardError(ValueError):
    """A re-reward that cannot run as asked; the message says what and how to fix it."""


class RewardWorkers(Protocol):
    """The producers' reward sandbox as re-scoring uses it: `score` returns the function's
    output, or reward 0 with status "timeout: ..." / "error: ..." (never raises for a sample)."""

    async def start(self) -> None: ...
    async def score(self, sample: RewardInput) -> RewardOutput: ...
    async def close(self) -> None: ...


RewardWorkersFactory = Callable[..., RewardWorkers]  # (RewardRecipe, *, timeout_s, ...)


class RerewardResult(msgspec.Struct, kw_only=True):
    run_id: str
    num_records: int = 0  # parent records re-scored by this call
    num_samples: int = 0
    num_changed: int = 0  # samples whose reward differs from the parent's
    num_dead_lettered: int = 0
    reward_before: float = 0.0  # mean over the re-scored samples
    reward_after: float = 0.0
    resumed_at: int = 0  # the parent offset this call started from (summed over partitions)
    num_reward_failures: int = 0  # samples scored 0 because the call timed out or failed
    first_failure: str = ""  # the status of the first one


async def rereward(log: Log, parent_id: str, reward: str, *, new_run: str, runs_dir: Path,
                   workers: RewardWorkersFactory,
                   on_progress: Callable[[int, int], None] | None = None) -> RerewardResult:
    """Re-score every recorded trajectory of `parent_id` with the hook at import path `reward`
    into run `new_run` (created, or continued if it is a re-reward of the same run with the same
    function), each call in `workers(spec, timeout_s=..., num_workers=...)` with the parent's
    reward settings. `on_progress(done, total)` is called after each page."""
    for what, run_id in (("RUN", parent_id), ("--as", new_run)):
        try:
            check_run_id(run_id)
        except ValueError as error:
            raise RerewardError(f"{what} {run_id!r}: {error}") from None
    spec = RewardRecipe(reward=reward, what="--reward")  # a built-in name or an import path
    spec.build()  # a bad one fails here, before anything is read or written
    if RunStreams(parent_id).events not in await log.list_streams(parent_id):
        raise RerewardError(f"no run {parent_id!r} in {log.url} (`streamrl inspect` lists runs)")
    parent = await load_run_context(log, parent_id, timeout_s=5.0)
    ctx = await _start(log, parent, reward, new_run, runs_dir)
    source = parent.streams.trajectories
    partitions = range(await trajectory_partitions(log, parent))
    offsets = {p: await log.committed(progress_group(new_run), source, p) or 0
               for p in partitions}
    end = sum([await log.end_offset(source, p) for p in partitions])
    r = parent.config.rollout
    sandbox = workers(spec, timeout_s=r.reward_timeout_s, num_workers=r.reward_workers)
    scorer = Scorer(sandbox, parent.hooks.tokenizer, await _prompts(log, parent))
    result = RerewardResult(run_id=new_run, resumed_at=sum(offsets.values()))
    # Several partitions: records are re-scored in the merged order a counterfactual reads the
    # parent in, each kept in its partition, so `replay --trajectories` reads them alike.
    reader = TrajectoryReader(log, source, finite=True, page=PAGE)
    await sandbox.start()
    try:
        while records := await reader.take(offsets, PAGE):
            appends = [await _rescored(record, ctx, scorer, result) for record in records]
            await log.transact(progress_group(new_run),
                               {StreamPartition(source, p): o for p, o in offsets.items()},
                               appends)
            result.num_records += len(records)
            if on_progress is not None:
                on_progress(sum(offsets.values()), end)
    finally:
        await sandbox.close()
    if result.num_samples:  # sums so far
        result.reward_before /= result.num_samples
        result.reward_after /= result.num_samples
    return result


class Scorer:
    """The producer's scoring step for recorded rows: same `RewardInput`, another function, in
    the same reward workers."""

    def __init__(self, workers: RewardWorkers, tokenizer: Tokenizer,
                 prompts: dict[str, Prompt]) -> None:
        self.workers, self.tokenizer, self.prompts = workers, tokenizer, prompts

    async def score(self, rows: pa.RecordBatch) -> list[RewardOutput]:
        """Every row's reward (a row whose group names no parent prompt raises a DecodeError
        before anything is scored)."""
        inputs = []
        for i, group_id in enumerate(rows["group_id"].to_pylist()):
            prompt = self.prompts.get(group_id)
            if prompt is None:
                raise TrajectoryDecodeError(
                    f"group {group_id!r} names no record of the parent's prompts stream",
                    where=f"row {i}, column 'group_id'", reason_code="prompt_missing")
            response = np.asarray(rows["response_tokens"][i].values, dtype=np.int32)
            finish = rows["finish_reason"][i].as_py()
            answer = response[:-1] if finish == "stop" else response  # as the producer does
            inputs.append(RewardInput(
                prompt_id=prompt.prompt_id, prompt_text=prompt_text(prompt.text, prompt.metadata),
                prompt_tokens=np.asarray(rows["prompt_tokens"][i].values, dtype=np.int32),
                response_text=self.tokenizer.decode(answer), response_tokens=response,
                finish_reason=finish, metadata=dict(prompt.metadata)))
        return list(await asyncio.gather(*(self.workers.score(x) for x in inputs)))


async def _rescored(record: Record, ctx: RunContext, scorer: Scorer,
                    result: RerewardResult) -> Append:
    """The record with new rewards for the new run's trajectories, or its dead letter."""
    try:
        rows = decode_trajectory_record(record)
        scores = await scorer.score(rows)
    except DecodeError as error:
        result.num_dead_lettered += 1
        letter = DeadLetter(run_id=ctx.run_id, reason_code=error.reason_code,
                            detail=str(error)[:4096], component="rereward",
                            source=LogPosition(*record.position), original=record.value)
        return Append(stream=ctx.streams.dlq, value=encode_event(letter), key=b"rereward")
    new = pa.array([s.reward for s in scores], pa.float32())
    old_np, new_np = rows["reward"].to_numpy(), new.to_numpy()
    result.num_samples += rows.num_rows
    failed = [s.status for s in scores if s.details.get("timeout") or s.details.get("error")]
    result.num_reward_failures += len(failed)
    result.first_failure = result.first_failure or (failed[0] if failed else "")
    result.num_changed += int((old_np != new_np).sum())
    result.reward_before += float(old_np.sum())
    result.reward_after += float(new_np.sum())
    details = [list(s.details.items()) or None for s in scores]
    replaced = {
        "run_id": pa.array([ctx.run_id] * rows.num_rows, pa.string()),
        "reward": new,
        "reward_details": pa.array(details, rows.schema.field("reward_details").type),
    }
    columns = [replaced.get(name, rows[name]) for name in rows.schema.names]
    batch = pa.RecordBatch.from_arrays(columns, schema=rows.schema)
    value = encode_trajectories(batch)
    return Append(stream=ctx.streams.trajectories, value=value, key=record.key,
                  headers=digest_headers(value), partition=record.partition)


async def _prompts(log: Log, parent: RunContext) -> dict[str, Prompt]:
    """group id -> the parent's prompt record it answers."""
    return {group_id_for(r.partition, r.offset): decode_event(r.value, "prompts")
            for r in await log.read_all(parent.streams.prompts)}


async def _start(log: Log, parent: RunContext, reward: str, new_run: str,
                 runs_dir: Path) -> RunContext:
    """The new run's context: created with its RunStarted, or read back to continue it."""
    streams = RunStreams(new_run)
    if streams.events in await log.list_streams(new_run):
        ctx = await load_run_context(log, new_run, timeout_s=5.0)
        same = (ctx.parent == RunParent(run_id=parent.run_id, version=0, relation="rereward")
                and ctx.config.rollout.reward == reward)
        if not same:
            raise RerewardError(f"run {new_run!r} already exists in {log.url} and is not a "
                                f"re-reward of {parent.run_id!r} with {reward!r}; choose "
                                "another --as")
        return ctx
    ctx = RunContext(run_id=new_run, config=_with_reward(parent.config, reward),
                     init_checkpoint=parent.init_checkpoint, run_dir=runs_dir / new_run,
                     parent=RunParent(run_id=parent.run_id, version=0, relation="rereward"))
    for kind, stream in streams.all().items():
        await log.ensure_stream(stream, parent.config.log.trajectory_partitions
                                if kind is StreamKind.TRAJECTORIES else 1)
    started: RunStarted = ctx.run_started(f"rereward of {parent.run_id}")
    started.config["rereward"] = {"source": parent.streams.trajectories, "reward": reward}
    await log.append(streams.events, encode_event(started))
    return ctx


def _with_reward(config: RunConfig, reward: str) -> RunConfig:
    data = msgspec.to_builtins(config)
    data["rollout"]["reward"] = reward
    data["rollout"]["reward_by_source"] = {}  # the one function scores every row
    return config_from_builtins(data)
