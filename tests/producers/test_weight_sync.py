"""A producer whose trainer's weight transport does not reach it fails loudly, naming the
transport and the fix, instead of generating with its first weights forever (shm across
containers did exactly that under compose)."""

from __future__ import annotations

import pytest

from streamrl.log import open_log
from streamrl.producers.weight_sync import MAX_UNREADABLE, WeightsUnreachable, WeightSync
from streamrl.schemas import WeightVersionAnnounced, encode_event
from streamrl.streams import RunStreams


class _Engine:
    version = 0

    def load_weights(self, tensors, version: int) -> None:  # never reached
        raise AssertionError("nothing was loadable")


async def test_versions_that_never_load_end_the_producer_with_the_reason(tmp_path) -> None:
    async with open_log(str(tmp_path / "log")) as log:
        stream = RunStreams("r").weights
        await log.ensure_stream(stream, 1)
        sync = WeightSync(log, "r", "producer-0")
        engine = _Engine()
        for version in range(1, MAX_UNREADABLE + 1):
            await log.append(stream, encode_event(WeightVersionAnnounced(
                run_id="r", version=version, parent=version - 1, digest="0" * 64,
                num_bytes=1, locator=f"shm://streamrl-elsewhere-v{version:08d}",
                transport="shm")))
            if version < MAX_UNREADABLE:
                await sync.apply(engine)  # a slow producer may miss a few versions
                continue
            with pytest.raises(WeightsUnreachable, match=r"transport 'shm'.*transport = \"file\""):
                await sync.apply(engine)
