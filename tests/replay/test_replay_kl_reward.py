"""`streamrl replay` reproduces, bit for bit, a tiny real run whose KL acts as a reward penalty
with the reference scored by the producer, trained with per-token (process) rewards: the
recorded `reference_logprobs` and `token_rewards` columns are all the learner needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrl import aio
from streamrl.log import open_log
from streamrl.schemas import TrainStep, batch_to_samples, decode_event, decode_trajectories
from streamrl.streams import RunStreams
from tests.helpers import streamrl
from tests.replay.conftest import make_run
from tests.replay.replay_util import MAX_VERSIONS

NUM_VERSIONS = 2  # half the shared recipe's: a run and its replay, each with a second model

ALGORITHM = """
[trainer.algorithm]
advantage = "process"
loss_config = { kl_coef = 0.05, kl_estimator = "k1" }
kl = { reference = "producer", penalty = "reward" }
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_replay_reproduces_a_kl_in_reward_run_with_producer_reference(
        recipe: Path, tmp_path: Path) -> None:
    text = recipe.read_text().replace("tests.replay.replay_util:reward",
                                      "tests.replay.kl_reward_task:reward").replace(
        f"max_versions = {MAX_VERSIONS}", f"max_versions = {NUM_VERSIONS}")
    kl_recipe = tmp_path / "kl_reward.toml"
    kl_recipe.write_text(text + ALGORITHM)
    made = make_run(kl_recipe, tmp_path, str(tmp_path / "log"))

    async def read() -> tuple[list, list[TrainStep]]:
        streams = RunStreams(made.run_id)
        async with open_log(made.log_url) as log:
            samples = [s for r in await log.read_all(streams.trajectories)
                       for s in batch_to_samples(decode_trajectories(r.value))]
            events = [decode_event(r.value, "events") for r in await log.read_all(streams.events)]
        return samples, [e for e in events if isinstance(e, TrainStep)]

    samples, steps = aio.run(read())
    for s in samples:
        assert s.reference_logprobs is not None and s.token_rewards is not None
        assert len(s.reference_logprobs) == len(s.response_tokens) == len(s.token_rewards)
        assert (s.reference_logprobs <= 0).all()
    assert len(steps) == NUM_VERSIONS
    assert all("kl_reward_mean" in s.metrics and "kl_ref" not in s.metrics for s in steps)
    assert steps[-1].metrics["kl_reward_mean"] != 0  # the policy moved away from the reference

    out = streamrl("replay", made.run_id, "--log", made.log_url)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert f"reproduced {NUM_VERSIONS}/{NUM_VERSIONS} versions bit-exactly" in out.stdout
