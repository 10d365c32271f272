"""`streamrl run` end to end on a tiny recipe: real processes, real log, exactly-once training,
also across a trainer killed with SIGKILL and restarted; and recipes that must not start."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest

from streamrl import aio
from streamrl.consumers.trainer.resume import read_history
from streamrl.log import Log, open_log
from streamrl.recipe.config import ConfigError, load_config
from streamrl.recipe.context import RunContext, load_run_context
from streamrl.run.driver import start_run
from streamrl.schemas import (
    BatchFormed,
    Rejected,
    TrainStep,
    WeightVersionAnnounced,
    decode_event,
    decode_trajectories,
)
from tests.helpers import TINY, spawn, streamrl


async def check_lineage(log: Log, ctx: RunContext) -> list[BatchFormed]:
    """What `streamrl audit` will check, in short: versions 0..N each announced once with an
    intact parent chain, every sample in at most one batch, every batch position real."""
    history = await read_history(log, ctx)
    versions = sorted(history.announced)
    assert versions == list(range(len(versions)))
    for v in versions[1:]:
        assert history.announced[v].parent == v - 1
    ids = [sid for b in history.batches for sid in b.sample_ids]
    assert len(ids) == len(set(ids)), "a sample was trained twice"
    assert [b.policy_version for b in history.batches] == versions[:-1]
    for batch in history.batches:
        for position, sid in zip(batch.positions, batch.sample_ids, strict=True):
            [record] = await log.read(position.stream, position.partition, position.offset,
                                      max_records=1)
            assert sid in decode_trajectories(record.value)["sample_id"].to_pylist()
    return history.batches


@pytest.mark.parametrize("backend", ["file", "kafka"])
def test_run_trains_every_version_exactly_once(backend: str, tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    log_url = str(tmp_path / "log") if backend == "file" else request.getfixturevalue("kafka_url")
    run_id = f"tiny-{uuid.uuid4().hex[:8]}"
    out = streamrl("run", str(TINY), "--log", log_url, "--run", run_id, "--runs-dir",
                   str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    assert "versions trained" in out.stdout
    run_dir = tmp_path / "runs" / run_id
    assert (run_dir / "reward.png").stat().st_size > 0
    assert any((run_dir / "tensorboard").iterdir())

    async def audit() -> None:
        async with open_log(log_url) as log:
            ctx = await load_run_context(log, run_id)
            batches = await check_lineage(log, ctx)
            assert len(batches) == 3 and all(len(b.sample_ids) == 8 for b in batches)
            events = [decode_event(r.value, "events")
                      for r in await log.read_all(ctx.streams.events)]
            steps = [e for e in events if isinstance(e, TrainStep)]
            # the recipe's training-step hook adds its metric to every step
            assert [s.metrics["hook_num_samples"] for s in steps] == [8.0, 8.0, 8.0]
            # every stale group was requeued: its prompt is back in the prompts stream
            stale = {e.subject.rsplit("-s", 1)[0] for e in events
                     if isinstance(e, Rejected) and e.reason_code == "stale_lag"}
            prompts = await log.read_all(ctx.streams.prompts)
            assert len(prompts) == 64 + len(stale)

    aio.run(audit())


async def _kill_and_resume(tmp_path: Path) -> None:
    log_url = str(tmp_path / "log")
    config = load_config(TINY)
    async with open_log(log_url) as log:
        ctx, v0 = await start_run(config, log, "restart", tmp_path / "runs", recipe=str(TINY))
        common = ("--log", log_url, "--run", "restart")
        with v0:
            producer = await spawn("streamrl.producers", *common)
            trainer = await spawn("streamrl.consumers.trainer", *common)
            # Kill the trainer right after its first committed version, mid-run.
            async for record in log.follow(ctx.streams.events, 0, poll_s=0.05):
                if isinstance(decode_event(record.value, "events"), TrainStep):
                    break
            trainer.send_signal(signal.SIGKILL)
            await trainer.wait()
            restarted = await spawn("streamrl.consumers.trainer", *common)
            assert await asyncio.wait_for(restarted.wait(), 480) == 0
            producer.terminate()
            await producer.wait()
        batches = await check_lineage(log, ctx)
        assert len(batches) == config.run.max_versions
        weights = [r.value for r in await log.read_all(ctx.streams.weights)]
        assert len(weights) == config.run.max_versions + 1  # no version announced twice


def test_a_killed_trainer_resumes_without_training_anything_twice(tmp_path: Path) -> None:
    aio.run(_kill_and_resume(tmp_path))


@pytest.mark.parametrize(("edit", "message"), [
    (("lr = 1e-3", "lrr = 1e-3"), "unknown field `lrr`"),
    (("batch_size = 8", "batch_size = 6"), "must be a multiple of data.samples_per_prompt"),
    (("tiny_task:reward", "tiny_task:rewards"), "rollout.reward"),
    (('"tests.run.tiny_task:reward"', '"mathh"'), "unknown reward 'mathh'"),
    (("max_lag = 1", "max_lagg = 1"), "did you mean 'max_lag'"),
    (("lr = 1e-3", 'lr = 1e-3\nbackend = "megatron"'),
     "needs a CUDA device: set trainer.compute.device"),
    (("lr = 1e-3", 'lr = 1e-3\nbackend = "megatron"\n'
                   'compute = { device = "cuda", compile = true }'),
     "does not take trainer.compute"),
    (('on_stale = "requeue" }', 'on_stale = "requeue" }\n\n[weights]\ndtype = "bfloat16"'),
     "apply to the cuda_ipc transport only"),
    (("lr = 1e-3", 'lr = 1e-3\nalgorithm = { kl = { penalty = "reward" } }'),
     "set loss_config.kl_coef > 0"),
])
def test_a_bad_recipe_never_starts_a_run(tmp_path: Path, edit: tuple[str, str],
                                         message: str) -> None:
    recipe = tmp_path / "bad.toml"
    text = TINY.read_text()
    assert edit[0] in text
    recipe.write_text(text.replace(*edit))
    with pytest.raises(ConfigError, match=message):
        load_config(recipe)
    out = streamrl("run", str(recipe), "--log", str(tmp_path / "log"))
    assert out.returncode == 2 and message.split("`")[0] in out.stderr
    assert not (tmp_path / "log").exists()  # nothing was written: no half-started run


def test_announced_versions_name_their_batches(tmp_path: Path) -> None:
    """Lineage both ways: each version names the batch that made it."""
    run_id = "lineage"
    out = streamrl("run", str(TINY), "--log", str(tmp_path / "log"), "--run", run_id,
                   "--runs-dir", str(tmp_path / "runs"), "--max-versions", "2")
    assert out.returncode == 0, out.stderr[-3000:]

    async def check() -> None:
        async with open_log(str(tmp_path / "log")) as log:
            ctx = await load_run_context(log, run_id)
            history = await read_history(log, ctx)
            for batch in history.batches:
                announced: WeightVersionAnnounced = history.announced[batch.policy_version + 1]
                assert announced.batch_ids == (batch.batch_id,)

    aio.run(check())


def test_a_custom_multi_turn_rollout_is_recorded_and_trained(tmp_path: Path) -> None:
    recipe = tmp_path / "two_turns.toml"
    recipe.write_text(TINY.read_text().replace(
        'reward = "tests.run.tiny_task:reward"',
        'reward = "tests.run.tiny_task:reward"\nrollout = "tests.run.tiny_task:two_turns"'))
    out = streamrl("run", str(recipe), "--log", str(tmp_path / "log"), "--run", "turns",
                   "--runs-dir", str(tmp_path / "runs"), "--max-versions", "2")
    assert out.returncode == 0, out.stderr[-3000:]

    async def check() -> None:
        async with open_log(str(tmp_path / "log")) as log:
            ctx = await load_run_context(log, "turns")
            await check_lineage(log, ctx)
            records = await log.read_all(ctx.streams.trajectories)
            masks = [m for r in records
                     for m in decode_trajectories(r.value)["loss_mask"].to_pylist()]
            # the environment's token in the middle of each response is never trained on
            assert masks and all(m.count(False) == 1 for m in masks)

    aio.run(check())
