"""Admission control takes back the slots of samples the trainer dropped (producers/budget.py).

Without the credit a producer under `AdmissionControl` counted every sample it ever started, so
after max_staleness * batch_size trainer-side drops its share was spent on samples nobody trains
and the run stalled for good. Here the real driver starts a run (max_staleness 0, batch 8, groups
of 4: a share of two groups per version), the real producer generates two groups, the trainer's
`BatchFormer` judges them stale and its Rejected events go to the events stream: with no new
version, the producer must start two more groups, and a restarted producer must count the same.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from streamrl.consumers.trainer.former import BatchFormer
from streamrl.log import Log, open_log
from streamrl.models import load_checkpoint
from streamrl.producers import worker
from streamrl.producers.budget import TrainerDrops, admission_count
from streamrl.producers.engine.engine import TorchEngine
from streamrl.producers.worker import Producer
from streamrl.recipe.config import load_recipe
from streamrl.recipe.context import RunContext
from streamrl.records import decode_trajectory_record
from streamrl.run.driver import start_run
from streamrl.schemas import encode_event
from streamrl.staleness import STALE_LAG, AdmissionControl
from tests.helpers import TINY, publish_started

BATCH_SIZE, GROUP = 8, 4  # tiny.toml's trainer.batch_size and data.samples_per_prompt


def recipe(tmp_path: Path) -> Path:
    text = TINY.read_text().replace(
        'policy = "streamrl.staleness:MaxLag"', 'policy = "streamrl.staleness:AdmissionControl"'
    ).replace('options = { max_lag = 1, on_stale = "requeue" }', "options = { max_staleness = 0 }")
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


async def generate_admitted(producer: Producer) -> None:
    """Start what admission allows, then decode until every started group is published."""
    await producer.admit_prompts()
    await publish_started(producer)


async def trainer_drops_everything(log: Log, ctx: RunContext, offset: int) -> int:
    """The trainer at version 1 judges the trajectories from `offset` with max_staleness 0: all
    stale (made by version 0). Its Rejected events go to the events stream; the next offset."""
    former = BatchFormer(AdmissionControl(max_staleness=0), BATCH_SIZE, ctx.run_id, set(),
                         {0: offset})
    for record in await log.read(ctx.streams.trajectories, 0, offset):
        decoded = decode_trajectory_record(record, vocab_size=64)
        former.add(record, decoded, 1, int(time.time() * 1000))
    rejected, _, next_offsets = former.take_decisions()
    assert {r.reason_code for r in rejected} == {STALE_LAG}
    for event in rejected:
        await log.append(ctx.streams.events, encode_event(event))
    return next_offsets[0]


async def test_dropped_samples_give_their_slots_back_live_and_after_a_restart(
        tmp_path: Path) -> None:
    config, hooks = load_recipe(recipe(tmp_path))
    async with open_log(str(tmp_path / "log"), writer_id="credit") as log:
        ctx, v0 = await start_run(config, log, "credit", tmp_path / "runs", recipe="test",
                                  hooks=hooks)
        with v0:
            engine = TorchEngine(load_checkpoint(ctx.init_checkpoint), config.rollout.engine)
            producer = Producer(log, ctx, engine, 0, 1)
            await producer.rewards.start()
            try:
                await producer._join()
                await generate_admitted(producer)  # version 0's share: two groups, then throttled
                assert producer.num_started == BATCH_SIZE and producer.throttled
                offset = await trainer_drops_everything(log, ctx, 0)
                await asyncio.sleep(worker.DROPS_EVERY_S)  # the throttled producer looks again
                await producer.admit_prompts()
                # no new version, yet the dropped samples' slots are free again
                assert len(producer.groups) == BATCH_SIZE // GROUP, producer.num_started
                await generate_admitted(producer)
                assert producer.num_started == BATCH_SIZE
                assert producer.weights.trainer_version == 0
            finally:
                await producer.rewards.close()

            # A restart counts the same from the log: 16 published - 8 dropped; any number of
            # producers' shares add up to exactly that, so the trainer can still fill its batch.
            events, trajectories = ctx.streams.events, ctx.streams.trajectories
            count, _ = await admission_count(log, trajectories, events, 0, 1)
            assert count == producer.num_started == BATCH_SIZE
            shares = [(await admission_count(log, trajectories, events, r, 3))[0]
                      for r in range(3)]
            assert shares == [3, 3, 2]

            # A drop is credited once, to the producer owning the sample's prompts partition
            # (the first two groups came from partition 0, the next two from 1), however often
            # it is read; the producer's own throttle events are not drops.
            await trainer_drops_everything(log, ctx, offset)
            assert await TrainerDrops(log, events).read(owned=set(range(2, 16))) == 0
            follower = TrainerDrops(log, events)
            assert await follower.read(owned={0}) == BATCH_SIZE
            assert await follower.read(owned={0, 1}) == 0
            assert await TrainerDrops(log, events).read(owned={0, 1}) == 2 * BATCH_SIZE
            assert (await admission_count(log, trajectories, events, 0, 1))[0] == 0
