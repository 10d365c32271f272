"""A producer killed with SIGKILL while groups finish out of order: its replacement publishes each
group exactly once (real producer processes, the real file log and the real Kafka broker).

Four prompts in one partition; the first is held, so the other three finish and are published
first. The committed position cannot pass the held prompt, so before the fix a restarted producer
generated and published the three finished groups again (`duplicate_group` in `streamrl audit`).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from streamrl.audit import audit_run
from streamrl.log import Log, open_log
from streamrl.recipe.config import load_config
from streamrl.recipe.context import PRODUCER_GROUP, RunContext
from streamrl.run.driver import start_run
from streamrl.schemas import decode_trajectories
from streamrl.schemas.ids import group_id_for
from tests.faults.held import HOLD_ENV, Holds
from tests.helpers import REPO, TINY, child_env

NUM_PROMPTS = 4
WAIT_S = 90.0


def one_partition_recipe(tmp_path: Path) -> Path:
    """tests/run/tiny.toml with four prompts, all in one partition, and the held rollout."""
    text = TINY.read_text()
    for old, new in [
        ("num_prompts = 64", f"num_prompts = {NUM_PROMPTS}"),
        ("num_producers = 1", "num_producers = 1\nmax_producers = 1\n"
                              'rollout = "tests.faults.held:held_rollout"'),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


class Producers:
    """Producer 0 of the run as real processes, one at a time, each logging to its own file."""

    def __init__(self, log_url: str, run_id: str, holds: Holds, logs: Path) -> None:
        self.log_url, self.run_id, self.holds, self.logs = log_url, run_id, holds, logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = child_env(**{HOLD_ENV: str(self.holds.folder)})
        out = (self.logs / f"producer-{len(self.started)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamrl.producers", "--log", self.log_url,
             "--run", self.run_id, "--index", "0", "--num-producers", "1"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        proc.send_signal(sig)
        assert proc.wait(timeout=WAIT_S) in (0, -signal.SIGKILL), self.output(proc)

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.logs / f"producer-{self.started.index(proc)}.log").read_text()[-3000:]

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
async def run(log_url: str, tmp_path: Path) -> AsyncIterator[tuple[RunContext, Producers]]:
    """A run of the one-partition recipe (prompts and version 0 published; no trainer), and its
    producer processes, all killed at the end."""
    config = load_config(one_partition_recipe(tmp_path))
    run_id = f"resume-{uuid.uuid4().hex[:8]}"
    async with open_log(log_url, writer_id=f"{run_id}-driver") as log:
        ctx, v0 = await start_run(config, log, run_id, tmp_path / "runs", recipe="test")
    producers = Producers(log_url, run_id, Holds(tmp_path / "holds"), tmp_path)
    with v0:
        try:
            yield ctx, producers
        finally:
            producers.kill_all()


async def wait_for(what: str, check: Callable[[], Awaitable[bool]],
                   proc: subprocess.Popen[bytes], producers: Producers) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        assert proc.poll() is None, f"producer exited ({proc.returncode}) before {what}:\n" \
                                    f"{producers.output(proc)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def published(log: Log, ctx: RunContext) -> Counter[str]:
    """How many trajectory records hold each group."""
    return Counter(g for r in await log.read_all(ctx.streams.trajectories)
                   for g in set(decode_trajectories(r.value)["group_id"].to_pylist()))


async def all_prompts_done(log: Log, ctx: RunContext) -> bool:
    """The producers' committed position is past the last prompt record."""
    last = (await log.read_all(ctx.streams.prompts, 0))[-1].offset
    return (await log.committed(PRODUCER_GROUP, ctx.streams.prompts, 0) or 0) > last


def group(offset: int) -> str:
    return group_id_for(0, offset)


async def kill_with_the_first_prompt_unfinished(log: Log, ctx: RunContext,
                                                producers: Producers) -> None:
    """Hold echo-0, let echo-1..3 be published, then SIGKILL the producer."""
    producers.holds.hold("echo-0")
    first = producers.start()

    async def three_published() -> bool:
        return len(await published(log, ctx)) == NUM_PROMPTS - 1

    await wait_for("three groups published", three_published, first, producers)
    assert set(await published(log, ctx)) == {group(1), group(2), group(3)}
    assert producers.holds.started.count("echo-0") == 1  # in flight when killed
    producers.stop(first, signal.SIGKILL)


async def test_a_restarted_producer_publishes_every_group_once(
        run: tuple[RunContext, Producers]) -> None:
    ctx, producers = run
    async with open_log(producers.log_url) as log:
        await kill_with_the_first_prompt_unfinished(log, ctx, producers)
        producers.holds.release("echo-0")
        second = producers.start()
        await wait_for("every prompt done", lambda: all_prompts_done(log, ctx), second, producers)
        producers.stop(second, signal.SIGTERM)

        assert await published(log, ctx) == {group(i): 1 for i in range(NUM_PROMPTS)}
        # the replacement generated only the prompt that was unfinished
        assert producers.holds.started[NUM_PROMPTS:] == ["echo-0"]
        report = await audit_run(log, ctx.run_id)
        assert not [v for v in report.violations if v.code.startswith("duplicate")]


@pytest.mark.slow
async def test_a_restarted_producer_hands_over_without_loss_or_duplicate(
        run: tuple[RunContext, Producers]) -> None:
    """Killed, restarted, then told to hand over (SIGUSR1, as `streamrl scale` does) while the
    unfinished prompt is still held: the next owner generates that prompt once, from its
    requeued record, and nothing else."""
    ctx, producers = run
    async with open_log(producers.log_url) as log:
        await kill_with_the_first_prompt_unfinished(log, ctx, producers)
        second = producers.start()

        async def restarted_echo_0() -> bool:
            return producers.holds.started.count("echo-0") == 2

        await wait_for("the held prompt restarted", restarted_echo_0, second, producers)
        producers.stop(second, signal.SIGUSR1)
        prompts = await log.read_all(ctx.streams.prompts, 0)
        assert len(prompts) == NUM_PROMPTS + 1  # echo-0 requeued, nothing else
        requeued = prompts[-1].offset

        producers.holds.release("echo-0")
        third = producers.start()
        await wait_for("every prompt done", lambda: all_prompts_done(log, ctx), third, producers)
        producers.stop(third, signal.SIGTERM)

        assert await published(log, ctx) == {group(1): 1, group(2): 1, group(3): 1,
                                             group(requeued): 1}
        assert producers.holds.started[NUM_PROMPTS:] == ["echo-0", "echo-0"]
