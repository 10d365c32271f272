"""Periodic evaluation (`[eval] every_versions`, producers/evaluate.py): producer 0 evaluates the
eval file at every N-th version it loads, records mean@k and pass@k as `EvalResult` events, never
writes an eval sample to the trajectories stream, and samples the same answers for the same seed
and version."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from streamrl.log import open_log
from streamrl.models import load_checkpoint
from streamrl.models.checkpoint import read_safetensors
from streamrl.producers.engine.engine import TorchEngine
from streamrl.producers.evaluate import Evaluation, pass_at_k
from streamrl.producers.rewards.sandbox import RewardSandbox
from streamrl.producers.rollout import EngineClient
from streamrl.producers.worker import Producer
from streamrl.recipe.config import ConfigError, load_recipe
from streamrl.recipe.context import RunContext
from streamrl.run.driver import start_run
from streamrl.run.monitor import Monitor, plot_reward
from streamrl.schemas import (
    EvalResult,
    ProducerLeft,
    TrainStep,
    decode_event,
    decode_trajectories,
    encode_event,
)
from tests.data.conftest import data_recipe
from tests.data.tiny_checkpoint import verl_rows, write_dataset

EVAL = "\n[eval]\nevery_versions = 2\nsamples = 4\n"
LAST = 9  # the run's max_versions: announcing it ends the producers


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    # n=5 samples, c=2 pass: pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is the share passing
    assert pass_at_k(5, 4, 2) == 1.0  # fewer failures than k: some draw always passes
    assert pass_at_k(4, 0, 4) == 0.0
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


def _recipe(tmp_path: Path, checkpoint: Path, extra: str = EVAL) -> Path:
    train = write_dataset(tmp_path / "train.jsonl", verl_rows(4))
    evals = write_dataset(tmp_path / "eval.jsonl", verl_rows(3))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(data_recipe(checkpoint, train, data=f'eval = "{evals}"').replace(
        "tests.data.tiny_checkpoint:reward", "tests.data.eval_reward:parity").replace(
        "max_versions = 2", f"max_versions = {LAST}") + extra)
    return recipe


def test_every_versions_without_an_eval_file_is_refused(checkpoint: Path,
                                                        tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, checkpoint)
    recipe.write_text(recipe.read_text().replace(f'eval = "{tmp_path / "eval.jsonl"}"', ""))
    with pytest.raises(ConfigError, match=r"set data\.eval"):
        load_recipe(recipe)


async def _evaluate_alone(ctx: RunContext, checkpoint: Path, version: int) -> EvalResult:
    """One evaluation on a fresh engine at the checkpoint's weights, nothing else running."""
    engine = TorchEngine(load_checkpoint(checkpoint), ctx.config.rollout.engine)
    client = EngineClient(engine)
    async with RewardSandbox(ctx.hooks.reward, timeout_s=10.0) as rewards:
        evaluation = Evaluation(ctx, "alone", generate=client.generate, score=rewards.score)
        task = asyncio.create_task(evaluation.run(version))
        while not task.done():
            await (client.step() if client.has_work() else asyncio.sleep(0.01))
        return task.result()


async def test_producer_0_evaluates_every_n_versions_apart_from_training(
        checkpoint: Path, tmp_path: Path) -> None:
    config, hooks = load_recipe(_recipe(tmp_path, checkpoint))
    engine = TorchEngine(load_checkpoint(checkpoint), config.rollout.engine)
    async with open_log(str(tmp_path / "log")) as log:
        ctx, v0 = await start_run(config, log, "evals", tmp_path / "runs", recipe="r",
                                  hooks=hooks)
        trainer = ctx.transport_config(keep_last=4, namespace="evals-test").open()
        producer = Producer(log, ctx, engine, 0, 1)
        running = asyncio.create_task(producer.run())

        async def evals() -> list[EvalResult]:
            return [e for r in await log.read_all(ctx.streams.events)
                    if isinstance(e := decode_event(r.value, "events"), EvalResult)]

        async def until(ok: Callable[[], Awaitable[bool]], what: str) -> None:
            for _ in range(1200):
                assert not running.done(), running.exception()
                if await ok():
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"timed out waiting until {what}")

        async def evaluated(n: int) -> bool:
            return len(await evals()) >= n

        async def loaded(version: int) -> bool:
            return engine.version >= version

        try:
            await until(lambda: evaluated(1), "version 0 is evaluated")
            tensors = read_safetensors(checkpoint)  # the trainer's part: new versions
            for version in (1, 2, 3):
                published = trainer.publish(version, tensors)
                await log.append(ctx.streams.weights, encode_event(
                    published.announce(run_id=ctx.run_id, parent=version - 1)))
                await until(lambda v=version: loaded(v), f"v{version} loads")
                if version == 2:
                    await until(lambda: evaluated(2), "version 2 is evaluated")
            producer.stopping.set()
            await running
            # producer 0 restarted at v3: v2 is recorded already, nothing is due again
            engine = TorchEngine(load_checkpoint(checkpoint), config.rollout.engine)
            producer = Producer(log, ctx, engine, 0, 1)
            running = asyncio.create_task(producer.run())
            await until(lambda: loaded(3), "the restarted producer loads v3")
            await asyncio.sleep(0.5)
            assert producer.eval_task is None
            # the trainer's last version: nothing more to generate for, the producer ends itself
            await log.append(ctx.streams.weights, encode_event(trainer.publish(
                LAST, tensors).announce(run_id=ctx.run_id, parent=3)))
            await asyncio.wait_for(running, 120)
            left = [e for r in await log.read_all(ctx.streams.events)
                    if isinstance(e := decode_event(r.value, "events"), ProducerLeft)]
            assert left[-1].reason == "run_finished"
        finally:
            producer.stopping.set()
            await running
            trainer.close()
            v0.close()
        recorded = await evals()
        trajectories = [row for r in await log.read_all(ctx.streams.trajectories)
                        for row in decode_trajectories(r.value).to_pylist()]
    # v1 and v3 are not multiples of 2; the last version, 9, stands for the skipped 4, 6 and 8
    assert [e.version for e in recorded] == [0, 2, LAST]
    for event in recorded:
        assert (event.num_prompts, event.num_samples, event.producer_id) == (3, 4, "producer-0")
        assert sorted(event.pass_at) == [1, 4]
        assert event.pass_at[1] == pytest.approx(event.mean_reward)  # rewards are 0 or 1
        assert 0 < event.mean_reward < 1  # a random model's first token is even about half
        assert event.pass_at[1] <= event.pass_at[4] <= 1
        assert event.num_reward_failures == 0
    # training went on meanwhile, and no eval prompt reached the trajectories
    assert trajectories
    assert not any(row["prompt_id"].startswith("eval-") for row in trajectories)
    # seeded by (run seed, version, prompt): the same figures again, evaluated alone
    alone = await _evaluate_alone(ctx, checkpoint, 0)
    assert (alone.mean_reward, alone.pass_at) == (recorded[0].mean_reward, recorded[0].pass_at)
    other_version = await _evaluate_alone(ctx, checkpoint, 2)
    assert (other_version.mean_reward, other_version.pass_at) == (
        recorded[1].mean_reward, recorded[1].pass_at)  # same weights at v2 in this test


async def test_the_monitor_shows_records_and_draws_the_evaluations(tmp_path: Path) -> None:
    """What `streamrl run` shows of them: the progress line, TensorBoard and the reward PNG
    (the whole command with periodic evaluation: tests/data/test_start.py, slow)."""
    async with open_log("memory://") as log:
        await log.ensure_stream("r.events", 1)
        monitor = Monitor(log, "r.events", 4, tmp_path)
        for version in (1, 2):
            await log.append("r.events", encode_event(TrainStep(
                run_id="r", step=version, version=version, metrics={"reward_mean": 0.5})))
        await log.append("r.events", encode_event(EvalResult(
            run_id="r", producer_id="producer-0", version=2, num_prompts=3, num_samples=4,
            mean_reward=0.25, pass_at={1: 0.25, 4: 0.5})))
        await monitor.poll(timeout_s=0.1)
        monitor.close()
    line = monitor.progress.tasks[0].description
    assert line == "reward 0.500  staleness 0.00  rejected 0  eval v2: mean@4 0.250 pass@4 0.500"
    assert [e.version for e in monitor.stats.evals] == [2]
    scalars = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"]
    assert {"eval/mean@4", "eval/pass@1", "eval/pass@4"} <= set(scalars)
    png = plot_reward(monitor.stats.steps, tmp_path / "reward.png", "r",
                      periodic=monitor.stats.evals)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
