"""`streamrl top RUN --once` on a run written to a real file log: the figures it shows are the
ones the events and trajectories hold (versions/s, step time, reward, eval, staleness, rejections,
consumer lag, weight publish/sync, each producer's samples, tokens and tokens/s)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np

from streamrl import aio
from streamrl.log import open_log
from streamrl.recipe.context import TRAINER_GROUP
from streamrl.schemas import (
    EvalResult,
    ProducerJoined,
    ProducerLeft,
    Rejected,
    RunStarted,
    TrainStep,
    WeightVersionLoaded,
    encode_event,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.testing import make_sample
from streamrl.streams import RunStreams
from tests.helpers import streamrl_here

RUN = "toprun"
T0 = datetime(2027, 1, 1, tzinfo=UTC)


async def _write_run(log_url: str, run_dir: Path) -> None:
    streams = RunStreams(RUN)
    t0 = 1_800_000_000_000
    events = [
        RunStarted(run_id=RUN, seed=0, streamrl_version="0.1.0", recipe="r.toml",
                   config={"run_config": {"run": {"name": "toprun", "max_versions": 8}},
                           "run_dir": str(run_dir)}),
        ProducerJoined(run_id=RUN, producer_id="producer-0", host="hostA", pid=11),
        ProducerJoined(run_id=RUN, producer_id="producer-1", host="hostB", pid=12),
        WeightVersionLoaded(run_id=RUN, producer_id="producer-0", version=1, load_ms=40),
        WeightVersionLoaded(run_id=RUN, producer_id="producer-1", version=2, load_ms=55),
        Rejected(run_id=RUN, subject="s1", reason_code="stale_lag"),
        Rejected(run_id=RUN, subject="s2", reason_code="stale_lag"),
        Rejected(run_id=RUN, subject="producer-1", reason_code="throttled"),
        # four versions 30 s apart: 3 versions in 90 s
        *[TrainStep(run_id=RUN, step=v, version=v, time_ms=t0 + 30_000 * v, metrics={
            "reward_mean": 0.1 * v, "step_ms": 1234.0, "staleness_mean": 0.5,
            "staleness_max": 1.0, "weights_copy_ms": 12.0, "weights_digest_ms": 34.0})
          for v in range(1, 5)],
        EvalResult(run_id=RUN, producer_id="producer-0", version=4, num_prompts=10,
                   num_samples=4, mean_reward=0.375, pass_at={1: 0.375, 4: 0.625}),
        ProducerLeft(run_id=RUN, producer_id="producer-1", host="hostB", pid=12,
                     reason="crash"),
    ]
    rng = np.random.default_rng(0)
    samples = []
    # producer-0: 3 samples of 10 tokens generated together in 2 s: 15 tok/s;
    # producer-1: 1 sample of 20 tokens in 4 s: 5 tok/s
    for k, (pid, n, seconds) in enumerate((("producer-0", 10, 2), ("producer-0", 10, 2),
                                           ("producer-0", 10, 2), ("producer-1", 20, 4))):
        s = make_sample(rng, sample_index=k, num_response_tokens=n, run_id=RUN)
        samples.append(msgspec.structs.replace(
            s, producer_id=pid, sample_id=f"g0-s{k}", started_at=T0,
            finished_at=T0 + timedelta(seconds=seconds)))
    async with open_log(log_url) as log:
        for stream in (streams.events, streams.trajectories):
            await log.ensure_stream(stream, 1)
        for event in events:
            await log.append(streams.events, encode_event(event))
        for sample in samples:  # one record per sample
            await log.append(streams.trajectories, encode_trajectories(samples_to_batch([sample])))
        await log.commit(TRAINER_GROUP, {(streams.trajectories, 0): 1})  # 3 records not trained


def test_top_once_shows_the_runs_figures(tmp_path: Path) -> None:
    log_url = str(tmp_path / "log")
    aio.run(_write_run(log_url, tmp_path / "runs" / RUN))
    code, out, err = streamrl_here("top", RUN, "--log", log_url, "--once")
    assert code == 0, err
    assert "version 4/8" in out and "(finished)" not in out
    assert "0.0333  (2.00/min)" in out  # versions/s
    assert "1234 ms" in out  # step time
    assert "0.400" in out  # the newest batch reward
    assert "mean@4 0.375  pass@4 0.625" in out and "eval at v4" in out
    assert "mean 0.50  max 1" in out
    assert "stale_lag 2, throttled 1" in out
    assert "3 records" in out  # consumer lag
    assert "copy 12 ms  digest 34 ms" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines()
            if line.startswith("│ producer-")}
    # producer, status, weights, sync ms, samples, tokens, tok/s
    assert rows["producer-0"][1:9] == ["producer-0", "│", "running", "│", "1", "│", "40", "│"]
    assert rows["producer-0"][9:14:2] == ["3", "30", "15.0"]
    assert rows["producer-1"][3:6] == ["left", "(crash)", "│"]
    assert rows["producer-1"][-6::2] == ["1", "20", "5.0"]
    assert "producer-0: hostA:11" in out


def test_top_reads_the_trainers_own_consumer_group() -> None:
    from streamrl.commands import top

    assert top.TRAINER_GROUP == TRAINER_GROUP


def test_top_refuses_an_unknown_run(tmp_path: Path) -> None:
    code, out, _ = streamrl_here("top", "nosuchrun", "--log", str(tmp_path / "log"), "--once")
    assert code == 2 and "no events stream" in out
