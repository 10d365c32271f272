"""Counterfactual replay and `streamrl compare` on a real recorded run: the parent's own policy
re-trains it bit for bit; a stricter policy makes a new run that names its parent and trains
another set of samples; a re-rewarded copy of the trajectories is trained instead when asked; the
comparison prints a table and writes a PNG."""

from __future__ import annotations

import json
from collections import Counter

import msgspec
import pyarrow as pa
import pytest

from streamrl import aio
from streamrl.log import open_log
from streamrl.schemas import (
    BatchFormed,
    Rejected,
    RunParent,
    RunStarted,
    TrainStep,
    decode_event,
    decode_trajectories,
    encode_event,
    encode_trajectories,
)
from streamrl.streams import RunStreams
from tests.helpers import streamrl, streamrl_here
from tests.replay.replay_util import MAX_VERSIONS, MadeRun, snapshot

PARENT_POLICY = "MaxLag,max_lag=1,on_stale=requeue"  # tests/run/tiny.toml's


class Streams(msgspec.Struct):
    started: RunStarted
    batches: list[BatchFormed]
    steps: list[TrainStep]
    rejected: list[Rejected]
    digests: list[str]


def read_run(made: MadeRun, run_id: str) -> Streams:
    async def read() -> Streams:
        streams = RunStreams(run_id)
        async with open_log(made.log_url) as log:
            events = [decode_event(r.value, "events") for r in await log.read_all(streams.events)]
            weights = [decode_event(r.value, "weights")
                       for r in await log.read_all(streams.weights)]
        return Streams(started=events[0],
                       batches=[e for e in events if isinstance(e, BatchFormed)],
                       steps=[e for e in events if isinstance(e, TrainStep)],
                       rejected=[e for e in events if isinstance(e, Rejected)],
                       digests=[w.digest for w in weights])

    return aio.run(read())


def counterfactual(made: MadeRun, new_run: str, *args: str) -> str:
    out = streamrl("replay", made.run_id, "--log", made.log_url, "--as", new_run, *args)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def same(file_run: MadeRun) -> str:
    before = snapshot(file_run)
    counterfactual(file_run, f"{file_run.run_id}-same", "--staleness", PARENT_POLICY)
    assert snapshot(file_run) == before, "a counterfactual wrote into its parent's streams"
    return f"{file_run.run_id}-same"


@pytest.fixture(scope="module")
def strict(file_run: MadeRun) -> tuple[str, str]:
    new_run = f"{file_run.run_id}-sync"
    return new_run, counterfactual(file_run, new_run, "--staleness", "MaxLag,max_lag=0")


def test_the_parents_own_policy_retrains_the_parent_bit_for_bit(file_run: MadeRun,
                                                                same: str) -> None:
    parent, cf = read_run(file_run, file_run.run_id), read_run(file_run, same)
    assert cf.digests == parent.digests  # versions 0..N, each the same weights
    assert [b.sample_ids for b in cf.batches] == [b.sample_ids for b in parent.batches]
    # the parent requeued stale groups; with no producers to regenerate them, they are dropped
    assert parent.rejected and {r.reason_code for r in cf.rejected} == {"requeue_dropped"}
    assert len(cf.rejected) == len(parent.rejected)


def test_on_kafka_the_parents_own_policy_retrains_the_parent_bit_for_bit(
        kafka_run: MadeRun) -> None:
    """The counterfactual commits its position on the parent's topic in Kafka transactions,
    under its own group: the parent's trainer position does not move."""
    before = snapshot(kafka_run)
    new_run = f"{kafka_run.run_id}-same"
    counterfactual(kafka_run, new_run, "--staleness", PARENT_POLICY)
    assert snapshot(kafka_run) == before
    parent, cf = read_run(kafka_run, kafka_run.run_id), read_run(kafka_run, new_run)
    assert cf.digests == parent.digests and len(cf.digests) == MAX_VERSIONS + 1
    assert [b.sample_ids for b in cf.batches] == [b.sample_ids for b in parent.batches]


def test_a_stricter_policy_is_a_new_run_naming_its_parent(file_run: MadeRun,
                                                          strict: tuple[str, str]) -> None:
    new_run, stdout = strict
    parent, cf = read_run(file_run, file_run.run_id), read_run(file_run, new_run)
    assert cf.started.parent == RunParent(run_id=file_run.run_id, version=0,
                                          relation="counterfactual")
    config, parent_config = cf.started.config["run_config"], parent.started.config["run_config"]
    assert config["staleness"] == {"policy": "streamrl.staleness:MaxLag",
                                   "options": {"max_lag": 0}}
    assert {**config, "staleness": None} == {**parent_config, "staleness": None}
    # it trained the parent's recorded samples, on-policy only (lag <= 0 by its own versions)
    assert all(p.stream == f"{file_run.run_id}.trajectories" for b in cf.batches
               for p in b.positions)
    assert cf.batches and all(b.staleness.max == 0 for b in cf.batches)
    assert any(b.staleness.max == 1 for b in parent.batches)
    trained = {s for b in cf.batches for s in b.sample_ids}
    assert trained != {s for b in parent.batches for s in b.sample_ids}
    assert any(r.reason_code == "stale_lag" for r in cf.rejected)
    assert cf.digests[0] == parent.digests[0] and cf.digests[-1] != parent.digests[-1]
    assert len(cf.steps) == len(cf.batches) == len(cf.digests) - 1 <= MAX_VERSIONS
    if len(cf.steps) < MAX_VERSIONS:
        assert "the recorded stream ended" in stdout
    # every other tool reads it like any run
    out = streamrl("inspect", new_run, "--log", file_run.log_url)
    assert out.returncode == 0 and new_run in out.stdout, out.stderr[-2000:]


async def _rereward_copy(made: MadeRun, run_id: str) -> None:
    """What `streamrl rereward` makes: a run whose trajectories are the parent's samples in the
    parent's order, each with a new reward (here 1 - reward)."""
    src, dst = RunStreams(made.run_id), RunStreams(run_id)
    async with open_log(made.log_url) as log:
        for stream in (dst.events, dst.trajectories):
            await log.ensure_stream(stream, 1)
        started = decode_event((await log.read(src.events, 0, 0, max_records=1))[0].value,
                               "events")
        await log.append(dst.events, encode_event(msgspec.structs.replace(
            started, run_id=run_id, parent=RunParent(run_id=made.run_id, version=0,
                                                     relation="rereward"))))
        for record in await log.read_all(src.trajectories):
            batch = decode_trajectories(record.value)
            i = batch.schema.get_field_index("reward")
            flipped = [1.0 - r for r in batch["reward"].to_pylist()]
            batch = batch.set_column(i, batch.schema.field(i),
                                     pa.array(flipped, type=batch.schema.field(i).type))
            await log.append(dst.trajectories, encode_trajectories(batch))


def test_trajectories_of_a_rereward_copy_are_trained_instead(file_run: MadeRun,
                                                              same: str) -> None:
    rerewarded, new_run = f"{file_run.run_id}-rr", f"{file_run.run_id}-rr-cf"
    aio.run(_rereward_copy(file_run, rerewarded))
    counterfactual(file_run, new_run, "--trajectories", rerewarded)  # the parent's policy
    cf, base = read_run(file_run, new_run), read_run(file_run, same)
    assert cf.started.parent == RunParent(run_id=file_run.run_id, version=0,
                                          relation="counterfactual")
    assert all(p.stream == f"{rerewarded}.trajectories" for b in cf.batches for p in b.positions)
    # the same samples in the same batches, each with the flipped reward
    assert [b.sample_ids for b in cf.batches] == [b.sample_ids for b in base.batches]
    assert [s.metrics["reward_mean"] for s in cf.steps] == pytest.approx(
        [1.0 - s.metrics["reward_mean"] for s in base.steps])
    assert cf.digests[1:] != base.digests[1:]


def test_another_loss_is_recorded_in_the_new_runs_config(file_run: MadeRun) -> None:
    new_run = f"{file_run.run_id}-tis"
    counterfactual(file_run, new_run, "--loss", "ppo_tis")  # a name, as in the recipe
    cf = read_run(file_run, new_run)
    assert cf.started.config["run_config"]["trainer"]["algorithm"]["loss"] == "ppo_tis"
    assert len(cf.steps) == MAX_VERSIONS  # the parent's own policy: the stream suffices


def test_compare_prints_a_table_and_writes_a_png(file_run: MadeRun, same: str,
                                                 strict: tuple[str, str], tmp_path) -> None:
    png = tmp_path / "cmp.png"
    out = streamrl("compare", file_run.run_id, same, strict[0], "--log", file_run.log_url,
                   "--png", str(png))
    assert out.returncode == 0, out.stderr[-3000:]
    for text in (file_run.run_id, same, strict[0], "samples trained", "final reward",
                 "rejected: requeue_dropped", "rejected: stale_lag", "staleness max",
                 f"counterfactual of {file_run.run_id}", str(png)):
        assert text in out.stdout, text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize(("args", "message"), [
    (("--staleness", "MaxLag,maxlag=0"), "did you mean 'max_lag'"),
    (("--staleness", "max_lag=0"), "start with the policy"),
    (("--staleness", "missing.toml"), "no such file"),
    (("--loss", "streamrl.consumers.trainer.losses:nope"), "does not load"),
    (("--loss", "gpso"), "did you mean 'gspo'"),
    (("--trajectories", "no-such-run"), "run 'no-such-run' does not exist"),
    (("--as", "x"), "--as needs --record"),
])
def test_bad_counterfactual_input_is_refused_clearly(file_run: MadeRun, args: tuple[str, ...],
                                                     message: str) -> None:
    code, _, err = streamrl_here("replay", file_run.run_id, "--log", file_run.log_url, *args)
    assert code == 2 and message in err, err


def test_an_existing_run_id_is_not_overwritten(file_run: MadeRun, same: str) -> None:
    code, _, err = streamrl_here("replay", file_run.run_id, "--log", file_run.log_url,
                                 "--staleness", PARENT_POLICY, "--as", same)
    assert code == 2 and "already exists" in err


def parent_rows(made: MadeRun) -> pa.Table:
    async def read() -> pa.Table:
        async with open_log(made.log_url) as log:
            return pa.Table.from_batches([decode_trajectories(r.value) for r in await log.read_all(
                RunStreams(made.run_id).trajectories)])
    return aio.run(read())


def test_staleness_of_a_counterfactual_counts_the_parents_samples(
        file_run: MadeRun, strict: tuple[str, str], tmp_path) -> None:
    """A counterfactual has no trajectories of its own: its report counts the parent's stream
    (what it chose from), the parent's producers' throughput, and its own verdicts."""
    new_run = strict[0]
    code, out, err = streamrl_here("staleness", new_run, "--log", file_run.log_url, "--out",
                                   str(tmp_path))
    assert code == 0, err
    summary = json.loads((tmp_path / "staleness.json").read_text())
    rows, cf = parent_rows(file_run), read_run(file_run, new_run)
    trained = {s for b in cf.batches for s in b.sample_ids}
    subjects = {r.subject for r in cf.rejected}
    assert summary["num_generated"] == rows.num_rows > 0
    assert summary["num_trained"] == len(trained) > 0
    assert summary["num_unused"] == sum(
        1 for s, g in zip(rows["sample_id"].to_pylist(), rows["group_id"].to_pylist(),
                          strict=True) if s not in trained | subjects and g not in subjects)
    assert summary["trajectory_streams"] == [f"{file_run.run_id}.trajectories"]
    assert summary["throughput"]["total"] == dict(Counter(rows["producer_id"].to_pylist()))
    assert summary["policy_options"] == {"max_lag": 0} and summary["per_sample"]["max"] == 0
    assert summary["rejected_by_reason"].get("stale_lag", 0) > 0
    # batch times count from the counterfactual's own start, not the parent's first sample
    assert summary["batches"] and all(0 <= b["time_s"] < 600 for b in summary["batches"])
    assert f"of {rows.num_rows} generated samples" in out
    assert f"read from {file_run.run_id}.trajectories" in out
