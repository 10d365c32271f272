"""`streamrl rereward` on a real tiny run: the new run holds the same samples in the same order,
record for record (so GRPO groups stay whole), with the rewards the new function gives; bad
records are dead-lettered, not fatal; an interrupted re-reward continues exactly once."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from streamrl import aio
from streamrl.consumers.rereward import RerewardError, progress_group, rereward
from streamrl.log import open_log
from streamrl.producers.rewards.sandbox import RewardSandbox
from streamrl.recipe.context import load_run_context
from streamrl.schemas import (
    DeadLetter,
    RunParent,
    decode_event,
    decode_trajectories,
    encode_trajectories,
)
from streamrl.schemas.ids import group_id_for, parse_group_id
from tests.fork.conftest import ParentRun
from tests.helpers import streamrl
from tests.run.tiny_task import TOKENIZER

KEPT = ("sample_id", "group_id", "prompt_id", "sample_index", "producer_id", "policy_version",
        "response_versions", "prompt_tokens", "response_tokens", "logprobs", "loss_mask",
        "finish_reason", "seed", "started_at", "finished_at")


def _expected(rows: pa.RecordBatch) -> list[float]:
    """What tests.fork.rewards:inverted must give, computed here from the tokens."""
    out = []
    for tokens, finish in zip(rows["response_tokens"].to_pylist(),
                              rows["finish_reason"].to_pylist(), strict=True):
        text = TOKENIZER.decode(tokens[:-1] if finish == "stop" else tokens)
        out.append(0.0 if text[:1] in "01234" and text else 1.0)
    return out


@pytest.mark.timeout(900)
def test_rereward_rescores_every_sample_in_order(parent_run: ParentRun, tmp_path: Path) -> None:
    out = streamrl("rereward", parent_run.run_id, "--reward", "tests.fork.rewards:inverted",
                   "--as", "inverted", "--log", str(parent_run.log),
                   "--runs-dir", str(parent_run.runs_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "re-scoring records" in out.stdout
    reported = re.search(r"rewards changed\s*│\s*(\d+)", out.stdout)
    assert reported is not None, out.stdout

    async def check() -> None:
        async with open_log(str(parent_run.log)) as log:
            parent = await load_run_context(log, parent_run.run_id)
            new = await load_run_context(log, "inverted")
            assert new.parent == RunParent(run_id="parent", version=0, relation="rereward")
            assert new.config.rollout.reward == "tests.fork.rewards:inverted"
            assert new.config.trainer == parent.config.trainer
            before = await log.read_all(parent.streams.trajectories)
            after = await log.read_all(new.streams.trajectories)
            assert len(after) == len(before) > 0  # record for record: groups stay whole
            changed, rewards = 0, []
            for old_record, new_record in zip(before, after, strict=True):
                old, rows = decode_trajectories(old_record.value), decode_trajectories(
                    new_record.value)
                for column in KEPT:
                    assert rows[column].equals(old[column]), column
                assert set(rows["run_id"].to_pylist()) == {"inverted"}
                assert rows["reward"].to_pylist() == _expected(rows)
                assert rows["reward"].to_pylist() == [1.0 - r for r in old["reward"].to_pylist()]
                details = rows["reward_details"].to_pylist()
                assert [dict(d)["original"] for d in details] == old["reward"].to_pylist()
                changed += rows.num_rows
                rewards += rows["reward"].to_pylist()
            assert int(reported[1]) == changed  # 0/1 rewards: every one flips
            assert 0 < sum(rewards) < changed  # mixed: the test can tell them apart

    aio.run(check())


async def test_bad_records_are_dead_lettered_and_a_rerun_continues(parent_run: ParentRun,
                                                                   tmp_path: Path) -> None:
    run = parent_run.copy(tmp_path / "log")
    async with open_log(str(run.log)) as log:
        parent = await load_run_context(log, run.run_id)
        source = parent.streams.trajectories
        num_records = await log.end_offset(source, 0)
        first = await rereward(log, run.run_id, "tests.fork.rewards:inverted", new_run="rr",
                               runs_dir=tmp_path / "runs", workers=RewardSandbox)
        assert first.num_records == num_records and first.num_dead_lettered == 0
        # The parent records more: garbage, a group whose prompt does not exist, a good one.
        # Running the same re-reward again continues after what it did, exactly once.
        [last] = await log.read(source, 0, num_records - 1, max_records=1)
        orphan = decode_trajectories(last.value)
        partition, offset = parse_group_id(orphan["group_id"][0].as_py())
        ghost = group_id_for(partition, offset + 10_000)
        orphan = orphan.set_column(orphan.schema.get_field_index("group_id"), "group_id",
                                   pa.array([ghost] * orphan.num_rows))
        await log.append(source, b"\x00not arrow")
        await log.append(source, encode_trajectories(orphan))
        await log.append(source, last.value)
        again = await rereward(log, run.run_id, "tests.fork.rewards:inverted", new_run="rr",
                               runs_dir=tmp_path / "runs", workers=RewardSandbox)
        assert (again.resumed_at, again.num_records) == (num_records, 3)
        assert again.num_dead_lettered == 2 and again.num_samples == orphan.num_rows
        new = await load_run_context(log, "rr")
        assert await log.end_offset(new.streams.trajectories, 0) == num_records + 1
        letters = [decode_event(r.value, "dlq") for r in await log.read_all(new.streams.dlq)]
        assert all(isinstance(d, DeadLetter) and d.component == "rereward" for d in letters)
        assert sorted(d.reason_code for d in letters) == ["malformed_ipc", "prompt_missing"]
        assert {d.source.offset for d in letters} == {num_records, num_records + 1}
        assert letters[0].original in (b"\x00not arrow", encode_trajectories(orphan))
        assert await log.committed(progress_group("rr"), source, 0) == num_records + 3


@pytest.mark.parametrize(("run", "reward", "new_run", "message"), [
    ("nosuch", "tests.fork.rewards:inverted", "x", "no run 'nosuch'"),
    ("parent", "tests.fork.rewards:missing", "x", "has no attribute 'missing'"),
    ("parent", "tests.fork.rewards", "x", "is not an import path"),
    ("parent", "exakt", "x", "--reward: unknown reward 'exakt'"),
    ("parent", "tests.fork.rewards:inverted", "bad.id", "--as 'bad.id'"),
])
async def test_a_bad_rereward_says_why_and_writes_nothing(
        parent_run: ParentRun, tmp_path: Path, run: str, reward: str, new_run: str,
        message: str) -> None:
    async with open_log(str(parent_run.log)) as log:
        streams = await log.list_streams()
        with pytest.raises(ValueError, match=re.escape(message)):
            await rereward(log, run, reward, new_run=new_run, runs_dir=tmp_path,
                           workers=RewardSandbox)
        assert await log.list_streams() == streams


def test_the_cli_says_why(parent_run: ParentRun, tmp_path: Path) -> None:
    out = streamrl("rereward", "nosuch", "--reward", "tests.fork.rewards:inverted", "--log",
                   str(parent_run.log), "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "error: no run 'nosuch'" in out.stderr, out.stderr[-2000:]


async def test_an_existing_run_of_another_kind_is_not_overwritten(parent_run: ParentRun,
                                                                  tmp_path: Path) -> None:
    run = parent_run.copy(tmp_path / "log")
    async with open_log(str(run.log)) as log:
        with pytest.raises(RerewardError, match=r"already exists .* not a re-reward"):
            await rereward(log, run.run_id, "tests.fork.rewards:inverted", new_run=run.run_id,
                           runs_dir=tmp_path / "runs", workers=RewardSandbox)
        # as in the producer: every sample scored 0 with the reason, and counted
        result = await rereward(log, run.run_id, "tests.fork.rewards:not_a_reward", new_run="x",
                                runs_dir=tmp_path / "runs", workers=RewardSandbox)
        assert result.num_reward_failures == result.num_samples > 0
        assert "returned float, expected RewardOutput" in result.first_failure
        assert result.reward_after == 0.0


async def test_a_built_in_reward_by_name_rescores_the_run(parent_run: ParentRun,
                                                          tmp_path: Path) -> None:
    async with open_log(str(parent_run.log)) as log:
        result = await rereward(log, parent_run.run_id, "format", new_run="by-name",
                                runs_dir=tmp_path, workers=RewardSandbox)
        assert result.num_samples > 0
        assert result.reward_after == 0.0  # the tiny task answers digits, never a \boxed{}
        assert (await load_run_context(log, "by-name")).config.rollout.reward == "format"
