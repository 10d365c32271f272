"""`streamrl run --fork RUN@VERSION` on a real tiny run: the fork starts from the parent's weights
(digest equal), trains to its own max_versions, never gives out again a prompt the parent had
trained before the fork point, trains the parent's untrained samples unchanged, and names its
parent; bad fork specs are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from streamrl import aio
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.resume import batch_rows, checkpoint_for, read_history, rebuild
from streamrl.log import Log, open_log
from streamrl.recipe.config import RunConfig, load_config
from streamrl.recipe.context import ForkPoint, RunContext, load_run_context
from streamrl.run.fork import ForkError, ForkSpec, fork_learner, parse_fork_spec, plan_fork
from streamrl.schemas import RunParent, RunStarted, decode_event, decode_trajectories
from streamrl.weights import weights_digest
from tests.fork.conftest import PARENT_VERSIONS, ParentRun
from tests.helpers import streamrl, streamrl_here

FORK_AT = 2


class Forked(msgspec.Struct, kw_only=True):
    run_id: str
    stdout: str


@pytest.fixture(scope="module")
def forked(parent_run: ParentRun) -> Forked:
    out = streamrl("run", str(parent_run.recipe), "--log", str(parent_run.log), "--run", "fork",
                   "--runs-dir", str(parent_run.runs_dir), "--fork", f"parent@{FORK_AT}",
                   "--max-versions", str(PARENT_VERSIONS))
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    return Forked(run_id="fork", stdout=out.stdout)


async def _rows(log: Log, ctx: RunContext) -> list[pa.RecordBatch]:
    return [decode_trajectories(r.value) for r in await log.read_all(ctx.streams.trajectories)]


def _column(rows: list[pa.RecordBatch], name: str) -> list:
    return [v for batch in rows for v in batch[name].to_pylist()]


@pytest.mark.timeout(900)
async def test_a_fork_continues_from_the_parents_version(parent_run: ParentRun,
                                                        forked: Forked) -> None:
    assert f"forked from parent@{FORK_AT}" in forked.stdout
    async with open_log(str(parent_run.log)) as log:
        parent = await load_run_context(log, parent_run.run_id)
        fork = await load_run_context(log, forked.run_id)
        theirs, ours = await read_history(log, parent), await read_history(log, fork)

        # Lineage: RunStarted names the parent, the first version is the parent's, same digest.
        [started] = [decode_event(r.value, "events")
                     for r in await log.read(fork.streams.events, 0, 0, max_records=1)]
        assert isinstance(started, RunStarted)
        assert started.parent == RunParent(run_id="parent", version=FORK_AT, relation="fork")
        assert fork.fork is not None and fork.first_version == FORK_AT
        assert sorted(ours.announced) == list(range(FORK_AT, PARENT_VERSIONS + 1))
        first = ours.announced[FORK_AT]
        assert len({a.digest for a in theirs.announced.values()}) == PARENT_VERSIONS + 1  # learned
        assert first.parent is None and first.digest == theirs.announced[FORK_AT].digest
        for v in range(FORK_AT + 1, PARENT_VERSIONS + 1):
            assert ours.announced[v].parent == v - 1
        # It trained versions FORK_AT+1 .. max_versions, each sample once.
        assert [b.policy_version for b in ours.batches] == list(range(FORK_AT, PARENT_VERSIONS))
        trained = [sid for b in ours.batches for sid in b.sample_ids]
        assert len(trained) == len(set(trained))

        # No prompt the parent had trained before the fork point comes back.
        parent_rows, fork_rows = await _rows(log, parent), await _rows(log, fork)
        before = {sid for b in theirs.batches if b.policy_version < FORK_AT for sid in b.sample_ids}
        consumed = {p for s, p in zip(_column(parent_rows, "sample_id"),
                                      _column(parent_rows, "prompt_id"), strict=True)
                    if s in before}
        assert len(consumed) == FORK_AT * 8 // 4  # 2 versions x 8 samples / 4 per group
        given = {decode_event(r.value, "prompts").prompt_id
                 for r in await log.read_all(fork.streams.prompts)}
        assert given and not given & consumed
        by_sample = dict(zip(_column(fork_rows, "sample_id"), _column(fork_rows, "prompt_id"),
                             strict=True))
        assert not {by_sample[s] for s in trained} & consumed

        # Carried samples: the parent's rows, renamed to the fork's prompt records, unchanged.
        assert fork.fork.carried and fork.fork.num_carried_samples == 4 * len(fork.fork.carried)
        parent_groups = {g: b for b in parent_rows for g in b["group_id"].to_pylist()}
        for batch in fork_rows[:len(fork.fork.carried)]:
            group = batch["group_id"][0].as_py()
            source = parent_groups[fork.fork.carried[group]]
            source = source.filter(pc.equal(source["group_id"], fork.fork.carried[group]))
            for column in ("response_tokens", "logprobs", "response_versions", "reward",
                           "prompt_id", "sample_index"):
                assert batch[column].equals(source[column]), column
            assert max(v for vs in batch["response_versions"].to_pylist() for v in vs) <= FORK_AT
            assert batch["run_id"].to_pylist() == ["fork"] * 4
    summary = json.loads((parent_run.runs_dir / "fork" / "summary.json").read_text())
    assert summary["parent"] == {"run_id": "parent", "version": FORK_AT, "relation": "fork"}
    assert (parent_run.runs_dir / "fork" / "checkpoints" / f"v{PARENT_VERSIONS:06d}").is_dir()


async def test_the_fork_learner_continues_the_parents_optimizer(parent_run: ParentRun,
                                                               tmp_path: Path) -> None:
    """Fork weights + optimizer state at v trained on the parent's batch v give exactly the
    parent's v+1; the same weights with a fresh optimizer do not (so the state matters)."""
    async with open_log(str(parent_run.log)) as log:
        parent = await load_run_context(log, parent_run.run_id)
        history = await read_history(log, parent)
        config = _with(parent.config, trainer={"lr": 5e-3})
        digest = await fork_learner(log, parent, history, FORK_AT, parent.config, tmp_path / "a")
        assert digest == history.announced[FORK_AT].digest
        [batch] = [b for b in history.batches if b.policy_version == FORK_AT]
        rows = await batch_rows(log, batch)
        expected = history.announced[FORK_AT + 1].digest
        setup = LearnerSetup.of_run(parent.config, parent.hooks)
        learner = Learner.from_checkpoint(tmp_path / "a", setup)
        learner.step(rows, list(batch.sample_weights), FORK_AT)
        assert weights_digest(learner.hf_state_dict()) == expected
        (tmp_path / "a" / "optimizer.pt").unlink()
        fresh = Learner.from_checkpoint(tmp_path / "a", setup)
        fresh.step(rows, list(batch.sample_weights), FORK_AT)
        assert weights_digest(fresh.hf_state_dict()) != expected
        # Another learning rate in the fork's recipe replaces the parent's in the saved state.
        await fork_learner(log, parent, history, FORK_AT, config, tmp_path / "b")
        changed = Learner.from_checkpoint(tmp_path / "b",
                                           LearnerSetup.of_run(config, parent.hooks))
        assert {g["lr"] for g in changed.optimizer.param_groups} == {5e-3}


def _with(config: RunConfig, **sections: dict) -> RunConfig:
    data = msgspec.to_builtins(config)
    for name, fields in sections.items():
        data[name] |= fields
    return msgspec.convert(data, RunConfig)


@pytest.mark.parametrize("text", ["parent", "parent@", "parent@two", "parent@-1", "@3",
                                  "par ent@1"])
def test_a_malformed_fork_spec_is_refused(text: str) -> None:
    with pytest.raises(ForkError, match="is not RUN@VERSION"):
        parse_fork_spec(text)


@pytest.mark.parametrize(("spec", "change", "message"), [
    ("nosuch@1", {}, "no run 'nosuch'"),
    ("parent@9", {}, "never announced version 9 \\(announced: 0..4\\)"),
    ("parent@2", {"run": {"max_versions": 2}}, "must be greater than the fork version"),
    ("parent@2", {"model": {"moe": True}}, "model differs from the parent's .*num_experts"),
    ("parent@2", {"data": {"samples_per_prompt": 8}, "trainer": {"batch_size": 16}},
     "data.samples_per_prompt: parent 4, recipe 8"),
])
async def test_a_fork_that_cannot_start_says_why(parent_run: ParentRun, tmp_path: Path,
                                                spec: str, change: dict, message: str) -> None:
    config = _with(load_config(parent_run.recipe), **change)
    async with open_log(str(parent_run.log)) as log:
        streams = await log.list_streams()
        with pytest.raises(ForkError, match=message):
            await plan_fork(log, config, parse_fork_spec(spec), tmp_path / "fork")
        assert await log.list_streams() == streams  # nothing written


def test_the_cli_refuses_a_bad_fork_before_writing(parent_run: ParentRun,
                                                   tmp_path: Path) -> None:
    log = parent_run.copy(tmp_path / "log").log
    out = streamrl("run", str(parent_run.recipe), "--log", str(log), "--run", "bad",
                   "--runs-dir", str(tmp_path / "runs"), "--fork", "parent@17")
    assert out.returncode == 2 and "never announced version 17" in out.stderr + out.stdout

    async def nothing_written() -> None:
        async with open_log(str(log)) as opened:
            assert await opened.list_streams("bad") == []

    aio.run(nothing_written())


def test_fork_spec_parses() -> None:
    assert parse_fork_spec(" run_a-1@20 ") == ForkSpec(run_id="run_a-1", version=20)


def test_a_forks_producers_count_carried_samples_as_started() -> None:
    """Admission control (AReaL's budget) counts a fork's samples from its first version, the
    carried ones first: 10 carried over 3 producers are slots 0..9, ranks 0, 1, 2 own 4, 3, 3."""
    point = ForkPoint(version=20, trajectories_offset=7, num_carried_samples=10)
    assert [point.carried_share(rank, 3) for rank in range(3)] == [4, 3, 3]
    assert point.carried_share(0, 1) == 10
    assert ForkPoint(version=5, trajectories_offset=0).carried_share(1, 2) == 0


def test_replay_of_a_fork_reproduces_its_versions(parent_run: ParentRun, forked: Forked,
                                                  tmp_path: Path) -> None:
    """The fork's versions FORK_AT+1.. come out bit for bit from its recorded starting state;
    with --chain, from the parent's replay instead (the saved state moved away to prove it)."""
    log = str(parent_run.log)
    out = streamrl("replay", forked.run_id, "--log", log)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    n = PARENT_VERSIONS - FORK_AT
    assert (f"run fork: reproduced {n}/{n} versions bit-exactly (versions {FORK_AT + 1}.."
            f"{PARENT_VERSIONS})") in out.stdout
    assert f"versions <= {FORK_AT} belong to parent" in out.stdout
    assert f"streamrl replay parent --until {FORK_AT}" in out.stdout

    async def digests() -> list[str]:
        async with open_log(log) as opened:
            fork = await load_run_context(opened, forked.run_id)
            return [a.digest for a in (await read_history(opened, fork)).announced.values()]
    assert len(set(aio.run(digests()))) == n + 1  # the fork's weights really changed

    saved = parent_run.runs_dir / forked.run_id / f"fork-v{FORK_AT:06d}"
    saved.rename(tmp_path / "moved")
    try:
        out = streamrl("replay", forked.run_id, "--log", log)
        assert out.returncode == 2 and "no longer exists" in out.stderr
        assert "--chain" in out.stderr
        out = streamrl("replay", forked.run_id, "--log", log, "--chain")
    finally:
        (tmp_path / "moved").rename(saved)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert f"run parent: reproduced {FORK_AT}/{FORK_AT} versions bit-exactly" in out.stdout
    assert f"run fork: reproduced {n}/{n} versions bit-exactly" in out.stdout
    assert "learner replayed above" in out.stdout


async def test_a_forked_trainer_rebuilds_after_a_restart(parent_run: ParentRun,
                                                         forked: Forked) -> None:
    """What a restarted fork trainer does (consumers/trainer/__main__.py): rebuild from its
    starting state (no checkpoint of its own yet) or its newest checkpoint plus its recorded
    batches; each version is digest-checked (ResumeError otherwise)."""
    async with open_log(str(parent_run.log)) as log:
        fork = await load_run_context(log, forked.run_id)
        history = await read_history(log, fork)
        assert checkpoint_for(fork, history, FORK_AT + 1) == (FORK_AT, fork.init_checkpoint)
        for until in (FORK_AT, FORK_AT + 1, PARENT_VERSIONS):
            learner = await rebuild(log, fork, LearnerSetup.of_run(fork.config, fork.hooks),
                                    history, until=until)
            assert weights_digest(learner.hf_state_dict()) == history.announced[until].digest


def test_staleness_of_a_fork_counts_its_carried_samples(parent_run: ParentRun, forked: Forked,
                                                        tmp_path: Path) -> None:
    out = streamrl("staleness", forked.run_id, "--log", str(parent_run.log), "--out",
                   str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    summary = json.loads((tmp_path / "staleness.json").read_text())

    async def rows() -> tuple[list[pa.RecordBatch], ForkPoint]:
        async with open_log(str(parent_run.log)) as log:
            fork = await load_run_context(log, forked.run_id)
            assert fork.fork is not None
            return await _rows(log, fork), fork.fork
    batches, point = aio.run(rows())
    assert summary["num_generated"] == sum(b.num_rows for b in batches)
    assert summary["num_carried"] == point.num_carried_samples > 0
    assert summary["trajectory_streams"] == ["fork.trajectories"]
    made = sum(summary["throughput"]["total"].values())
    assert made == summary["num_generated"] - point.num_carried_samples
    assert all(b["time_s"] >= 0 for b in summary["batches"])
    assert "carried over from the parent" in out.stdout


def test_a_counterfactual_of_a_fork_is_refused_clearly(parent_run: ParentRun,
                                                       forked: Forked) -> None:
    """Not supported yet (its versions would restart at 0 from the fork's starting state)."""
    code, _, err = streamrl_here("replay", forked.run_id, "--log", str(parent_run.log),
                                 "--staleness", "MaxLag,max_lag=0", "--as", "fork-cf")
    assert code == 2 and f"is a fork (of parent@{FORK_AT})" in err, err
