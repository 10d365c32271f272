"""A MoE run end to end on CPU: the producer records every response token's routed experts, the
log stores them as packed top-k sets with the model's expert count, the trainer replays them, and
`streamrl replay` reproduces the run bit for bit from that record."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from streamrl import aio
from streamrl.log import open_log
from streamrl.schemas import batch_to_samples, decode_trajectories
from streamrl.streams import RunStreams
from tests.helpers import TINY, streamrl


def test_a_moe_run_records_packed_routing_and_replays_bit_exactly(tmp_path: Path) -> None:
    recipe = tmp_path / "moe.toml"
    recipe.write_text(TINY.read_text().replace('init = "tests.run.tiny_task:init"',
                                               'init = "tests.run.tiny_task:init"\nmoe = true'))
    log_url, run_id = str(tmp_path / "log"), f"tinymoe-{uuid.uuid4().hex[:8]}"
    out = streamrl("run", str(recipe), "--log", log_url, "--run", run_id, "--runs-dir",
                   str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]

    async def trajectories() -> list:
        async with open_log(log_url) as log:
            return await log.read_all(RunStreams(run_id).trajectories)

    records = aio.run(trajectories())
    assert records
    for record in records:
        batch = decode_trajectories(record.value)
        assert batch["routed_experts_packed"].null_count == 0  # every row stored as packed sets
        for sample in batch_to_samples(batch):
            routing = np.asarray(sample.routed_experts)
            # the model's expert count (tiny_task: 4 experts, top-2, 1 layer), not the largest id
            assert sample.moe_num_experts == 4
            assert routing.shape == (len(sample.response_tokens), 1, 2)
            assert (np.diff(routing, axis=-1) > 0).all()  # a set: distinct ids, ascending
            assert routing.max() < 4
    replay = streamrl("replay", run_id, "--log", log_url, "--runs-dir", str(tmp_path / "runs"))
    assert replay.returncode == 0, replay.stdout[-3000:] + replay.stderr[-3000:]
    assert "bit-exactly" in replay.stdout
