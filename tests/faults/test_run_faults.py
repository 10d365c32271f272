"""Fault tolerance of a real run (tiny recipe, real processes, a private Kafka broker): a producer
killed with SIGKILL mid-run, the trainer killed between an optimizer step and its checkpoint, the
broker killed and restarted, a producer frozen with SIGSTOP. After each, the run finishes under
the local supervisor and `streamrl audit` passes, trained == covered by committed positions."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from streamrl.launch.local import LocalLauncher
from streamrl.log import Log, open_log
from streamrl.recipe.config import load_config
from streamrl.recipe.context import RunContext
from streamrl.run.driver import start_run, supervise
from streamrl.schemas import ProducerJoined, TrainStep, decode_event
from tests.faults.broker import Broker
from tests.faults.chaos import KILL_AT_ENV, assert_exactly_once
from tests.helpers import REPO, TINY

Chaos = Callable[[Log, RunContext, LocalLauncher], Awaitable[None]]
FROZEN_S = 20.0


pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _children_find_the_test_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def recipe(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = TINY.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


async def supervised_run(broker: Broker, tmp_path: Path, recipe_path: Path,
                         chaos: Chaos) -> tuple[RunContext, LocalLauncher]:
    """Start a run, let `chaos` do its worst while the supervisor runs it, check the result."""
    config = load_config(recipe_path)
    run_id = f"fault-{uuid.uuid4().hex[:8]}"
    async with open_log(broker.url, writer_id=f"{run_id}-driver") as log:
        ctx, v0 = await start_run(config, log, run_id, tmp_path / "runs", recipe=str(recipe_path))
        launcher = LocalLauncher(broker.url, run_id)
        with v0:
            run = asyncio.create_task(supervise(ctx, broker.url, log, launcher))
            try:
                await chaos(log, ctx, launcher)
                await asyncio.wait_for(run, 420)
            finally:
                run.cancel()
        await assert_exactly_once(log, ctx)
    return ctx, launcher


async def first(log: Log, stream: str, match: Callable[[object], bool]) -> None:
    async for record in log.follow(stream, 0, poll_s=0.1):
        if match(record):
            return


def is_train_step(record: object) -> bool:
    return isinstance(decode_event(record.value, "events"), TrainStep)  # type: ignore[attr-defined]


async def test_a_producer_killed_mid_run_is_restarted_and_nothing_is_lost(
        broker: Broker, tmp_path: Path) -> None:
    async def kill_producer(log: Log, ctx: RunContext, launcher: LocalLauncher) -> None:
        await first(log, ctx.streams.trajectories, lambda r: True)  # it is publishing
        os.kill(launcher.producers[0][1].pid, signal.SIGKILL)

    ctx, launcher = await supervised_run(broker, tmp_path, recipe(tmp_path), kill_producer)
    assert launcher.restarts == {"producer 0": 1}
    async with open_log(broker.url) as log:
        joined = [e for r in await log.read_all(ctx.streams.events)
                  if isinstance(e := decode_event(r.value, "events"), ProducerJoined)]
        assert len(joined) == 2  # the first incarnation and its replacement


async def test_a_trainer_killed_between_step_and_checkpoint_resumes(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Checkpoints at 2 and 4; killed after the optimizer step of version 4, before its commit and
    # checkpoint: the restarted trainer rebuilds from checkpoint 2 plus the recorded batch 2->3.
    monkeypatch.setenv(KILL_AT_ENV, f"4:{tmp_path / 'killed'}")
    path = recipe(tmp_path, ("max_versions = 3", "max_versions = 5"),
                  ('step_hooks = ["tests.run.tiny_task:count_samples"]',
                   'step_hooks = ["tests.faults.chaos:kill_trainer_once"]'))

    async def nothing(log: Log, ctx: RunContext, launcher: LocalLauncher) -> None:
        pass

    _, launcher = await supervised_run(broker, tmp_path, path, nothing)
    assert (tmp_path / "killed").exists()
    assert launcher.restarts == {"trainer": 1}


async def test_the_broker_killed_and_restarted_mid_run_loses_nothing_acknowledged(
        broker: Broker, tmp_path: Path) -> None:
    seen: dict[str, list[bytes]] = {}

    async def kill_broker(log: Log, ctx: RunContext, launcher: LocalLauncher) -> None:
        await first(log, ctx.streams.events, is_train_step)
        for stream in (ctx.streams.events, ctx.streams.trajectories, ctx.streams.weights):
            seen[stream] = [r.value for r in await log.read_all(stream)]
        broker.kill()
        restart = threading.Thread(target=lambda: (time.sleep(2.0), broker.start()))
        restart.start()
        await asyncio.to_thread(restart.join)

    await supervised_run(broker, tmp_path, recipe(tmp_path), kill_broker)
    async with open_log(broker.url) as log:
        for stream, before in seen.items():  # acknowledged before the crash: all still there
            after = [r.value for r in await log.read_all(stream)]
            assert after[:len(before)] == before, stream


async def test_a_frozen_producer_does_not_stall_the_trainer(broker: Broker, tmp_path: Path) -> None:
    """SIGSTOP one of two producers for 20 s. MaxLag admits without limit, so the policy allows
    no stall: the other producer keeps the trainer making versions all along."""
    path = recipe(tmp_path, ("num_producers = 1", "num_producers = 2"),
                  ("max_versions = 3", "max_versions = 10"))
    versions_while_frozen: list[float] = []

    async def freeze(log: Log, ctx: RunContext, launcher: LocalLauncher) -> None:
        await first(log, ctx.streams.events, is_train_step)
        start = await log.end_offset(ctx.streams.events, 0)
        frozen = launcher.producers[0][1].pid
        os.kill(frozen, signal.SIGSTOP)
        t0 = time.monotonic()

        async def watch() -> None:
            async for record in log.follow(ctx.streams.events, 0, start, poll_s=0.1):
                if is_train_step(record):
                    versions_while_frozen.append(time.monotonic() - t0)

        try:
            await asyncio.wait_for(watch(), FROZEN_S)
        except TimeoutError:
            pass
        finally:
            os.kill(frozen, signal.SIGCONT)

    await supervised_run(broker, tmp_path, path, freeze)
    print(f"versions while producer 0 was frozen ({FROZEN_S:.0f} s): at {versions_while_frozen}")
    assert len(versions_while_frozen) >= 2, versions_while_frozen
