"""A trajectories stream of two partitions (`[log] trajectory_partitions = 2`), on the file log
and on Kafka: the real trainer process code trains every record exactly once, records the order
it took them in `BatchFormed`, and `replay` reproduces every version bit-exactly from that record;
a trainer that fails between reading and committing resumes with nothing lost or repeated; a
stream whose partition count differs from the recipe's is refused."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import msgspec
import numpy as np
import pytest

from streamrl.audit import audit_run
from streamrl.consumers.trainer.__main__ import train
from streamrl.consumers.trainer.resume import read_history
from streamrl.log import Append, Log, open_log
from streamrl.log.file import FileLog
from streamrl.recipe.config import ConfigError, load_recipe
from streamrl.recipe.context import load_run_context, trajectory_partitions
from streamrl.replay.exact import replay_exact
from streamrl.run.driver import start_run
from streamrl.run.fork_position import judged_offsets
from streamrl.schemas import BatchFormed, decode_event, encode_trajectories, samples_to_batch
from streamrl.schemas.integrity import digest_headers
from streamrl.schemas.testing import make_group
from streamrl.streams import RunStreams
from tests.helpers import TINY
from tests.run.tiny_task import TOKENIZER

MAX_VERSIONS, GROUPS = 4, 8  # tiny.toml: batch_size 8 = 2 groups of 4


def recipe(tmp_path: Path) -> Path:
    text = (TINY.read_text().replace("max_versions = 3", f"max_versions = {MAX_VERSIONS}")
            .replace('options = { max_lag = 1, on_stale = "requeue" }',
                     'options = { max_lag = 100, on_stale = "drop" }'))
    path = tmp_path / "partitions.toml"
    path.write_text(text + "\n[log]\ntrajectory_partitions = 2\n")
    return path


async def write_groups(log: Log, run_id: str) -> list[tuple[int, list[str]]]:
    """GROUPS groups made by version 0 with rewards that vary (so every step changes the
    weights), alternately to partition 1 and partition 0: partition 1's first record arrived
    first, so each batch takes a group of partition 1 before one of partition 0."""
    rng = np.random.default_rng(7)
    written = []
    for i in range(GROUPS):
        group = make_group(rng, run_id=run_id, vocab_size=TOKENIZER.vocab_size, policy_version=0,
                           num_prompt_tokens=5, num_response_tokens=3)
        group = [msgspec.structs.replace(s, reward=float(k % 2),
                                         response_versions=np.zeros(3, np.uint32))
                 for k, s in enumerate(group)]
        partition = 1 - i % 2
        value = encode_trajectories(samples_to_batch(group))
        await log.append_many([Append(stream=RunStreams(run_id).trajectories, value=value,
                                      partition=partition, headers=digest_headers(value))])
        written.append((partition, [s.sample_id for s in group]))
        await asyncio.sleep(0.005)  # distinct record timestamps
    return written


async def batches(log: Log, run_id: str) -> list[BatchFormed]:
    events = [decode_event(r.value, "events")
              for r in await log.read_all(RunStreams(run_id).events, 0)]
    return [e for e in events if isinstance(e, BatchFormed)]


async def check_trained_exactly_once(log: Log, run_id: str,
                                     written: list[tuple[int, list[str]]]) -> None:
    formed = await batches(log, run_id)
    assert [b.policy_version for b in formed] == list(range(MAX_VERSIONS))
    trained = [sid for b in formed for sid in b.sample_ids]
    assert sorted(trained) == sorted(sid for _, ids in written for sid in ids)  # each once
    # arrival order across partitions is recorded: partition 1's records came first
    for batch in formed:
        assert [p.partition for p in batch.positions] == [1] * 4 + [0] * 4
    streams = RunStreams(run_id)
    for p in (0, 1):  # both partitions committed to their ends, in the last batch's transaction
        end = await log.end_offset(streams.trajectories, p)
        assert await log.committed("trainer", streams.trajectories, p) == end
        assert formed[-1].consumed_to[p].offset == end
    # a fork at version 2 starts each partition where the batch that made version 2 stopped
    history = await read_history(log, await load_run_context(log, run_id))
    assert judged_offsets(history, 2) == {0: 2, 1: 2}
    report = await replay_exact(log, run_id)
    assert report.ok and report.headline == (
        f"reproduced {MAX_VERSIONS}/{MAX_VERSIONS} versions bit-exactly"), report.headline
    audit = await audit_run(log, run_id)
    assert audit.ok, [v.message for v in audit.violations]


async def two_partition_run(tmp_path: Path, log_url: str, *, fail_commit: int | None = None,
                            monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    config, hooks = load_recipe(recipe(tmp_path))
    run_id = f"parts-{uuid.uuid4().hex[:8]}"
    async with open_log(log_url, writer_id=f"{run_id}-driver") as log:
        ctx, v0 = await start_run(config, log, run_id, tmp_path / "runs", recipe="test",
                                  hooks=hooks)
        with v0:
            assert await log.num_partitions(ctx.streams.trajectories) == 2
            written = await write_groups(log, run_id)
            if fail_commit is not None:
                assert monkeypatch is not None
                calls = {"n": 0}
                real = FileLog.transact

                async def flaky(self, group, offsets, appends):
                    if group == "trainer":
                        calls["n"] += 1
                        if calls["n"] == fail_commit:
                            raise OSError("crash between reading and committing")
                    return await real(self, group, offsets, appends)

                monkeypatch.setattr(FileLog, "transact", flaky)
                with pytest.raises(OSError, match="crash between"):
                    await train(log_url, run_id)
                monkeypatch.setattr(FileLog, "transact", real)
                done = await batches(log, run_id)
                assert len(done) == fail_commit - 1  # the failed batch left nothing behind
                assert len({p.partition for b in done for p in b.positions}) == 2
            await train(log_url, run_id)
            await check_trained_exactly_once(log, run_id, written)


def test_two_partitions_train_replay_and_audit_on_the_file_log(tmp_path: Path) -> None:
    asyncio.run(two_partition_run(tmp_path, str(tmp_path / "log")))


def test_two_partitions_train_replay_and_audit_on_kafka(tmp_path: Path, kafka_url: str) -> None:
    asyncio.run(two_partition_run(tmp_path, kafka_url))


def test_a_trainer_that_fails_before_a_commit_resumes_exactly_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The third batch (records of both partitions) is trained but its transaction fails: the
    restarted trainer rebuilds versions 1-2, re-reads from both committed positions and trains
    every sample once."""
    asyncio.run(two_partition_run(tmp_path, str(tmp_path / "log"), fail_commit=3,
                                  monkeypatch=monkeypatch))


def test_a_stream_with_another_partition_count_is_refused(tmp_path: Path) -> None:
    async def check() -> None:
        config, hooks = load_recipe(recipe(tmp_path))
        async with open_log(str(tmp_path / "log")) as log:
            ctx, v0 = await start_run(config, log, "parts", tmp_path / "runs", recipe="test",
                                      hooks=hooks)
            v0.close()
            one = load_recipe(TINY)[0]  # the same run id, recorded as one partition
            ctx = await load_run_context(log, "parts")
            ctx = msgspec.structs.replace(ctx, config=one)
            with pytest.raises(ConfigError, match=r"parts.trajectories has 2 partitions .* "
                                                  r"log.trajectory_partitions = 1"):
                await trajectory_partitions(log, ctx)

    asyncio.run(check())
