"""A (re)started producer's share of the admission budget, rebuilt from the published samples
(producers/budget.py): the ranks' shares add up to exactly what was published."""

from __future__ import annotations

import numpy as np

from streamrl.log import open_log
from streamrl.producers.budget import num_published_samples, started_share
from streamrl.schemas import encode_trajectories, samples_to_batch
from streamrl.schemas.testing import make_sample


async def test_published_samples_are_counted_and_split_over_the_ranks(tmp_path) -> None:
    rng = np.random.default_rng(0)
    async with open_log(str(tmp_path / "log")) as log:
        await log.ensure_stream("r.trajectories", 1)
        for group in range(5):  # groups of 4 samples, and one undecodable record
            batch = samples_to_batch([make_sample(rng, group_id=f"g{group}") for _ in range(4)])
            await log.append("r.trajectories", encode_trajectories(batch))
        await log.append("r.trajectories", b"not arrow")
        num_published = await num_published_samples(log, "r.trajectories")
    assert num_published == 20
    for num_producers in (1, 2, 3, 7):
        shares = [started_share(num_published, rank, num_producers)
                  for rank in range(num_producers)]
        assert sum(shares) == num_published and max(shares) - min(shares) <= 1
    assert started_share(0, 1, 2) == 0
