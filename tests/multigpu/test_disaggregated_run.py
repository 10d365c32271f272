"""The tiny recipe run end to end with its weights over the process-group transport (gloo on
CPU): the trainer is rank 0 of the weight group, the producer rank 1, both started by the local
launcher with their ranks in the environment; version 0 goes as files (the driver is no rank)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamrl.log import open_log
from streamrl.schemas import decode_event
from streamrl.streams import RunStreams
from tests.helpers import TINY, streamrl
from tests.multigpu.test_broadcast import free_address


async def read(log_dir: Path, run_id: str) -> tuple[list, list]:
    streams = RunStreams(run_id)
    async with open_log(str(log_dir), writer_id="test-reader") as log:
        weights = [decode_event(r.value, "weights") for r in await log.read_all(streams.weights)]
        events = [decode_event(r.value, "events") for r in await log.read_all(streams.events)]
    return weights, events


@pytest.mark.slow
def test_a_tiny_run_completes_with_weights_broadcast_over_gloo(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny_broadcast.toml"
    recipe.write_text(TINY.read_text() + f"""
[weights]
transport = "broadcast"
group_address = "{free_address()}"
group_backend = "gloo"
""")
    run_id = "tiny-bcast"
    done = streamrl("run", str(recipe), "--run", run_id, "--log", str(tmp_path / "log"),
                    "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr[-3000:]
    weights, events = asyncio.run(read(tmp_path / "log", run_id))
    assert [(w.version, w.transport) for w in weights] == [
        (0, "file"), (1, "broadcast"), (2, "broadcast"), (3, "broadcast")]
    assert all(w.locator.startswith("broadcast://") for w in weights[1:])
    loaded = {e.version for e in events if type(e).__name__ == "WeightVersionLoaded"}
    # version 1 went out before the producer had joined the group; later ones reached it
    assert loaded & {2, 3}, f"the producer loaded only versions {sorted(loaded)}"
