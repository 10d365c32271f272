"""A tiny run with `[weights] dtype = "float8_e4m3fn"` end to end on the file log: every
version (0 included) travels as FP8 with both digests announced, the producer's engine loads
and generates from each, replay reproduces the trainer's digests and the audit passes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from streamrl import aio
from streamrl.audit import audit_run
from streamrl.log import open_log
from streamrl.models.checkpoint import read_safetensors
from streamrl.recipe.context import context_from_event
from streamrl.records import decode_trajectory_record
from streamrl.replay.exact import replay_exact
from streamrl.schemas import CheckpointSaved, RunStarted, WeightVersionLoaded, decode_event
from streamrl.streams import RunStreams
from streamrl.weights import weights_digest
from streamrl.weights.fp8 import SCHEME, quantize_state
from streamrl.weights.inline import tensor_bytes
from tests.helpers import TINY, streamrl


@pytest.mark.slow
@pytest.mark.timeout(900)  # a whole run: three processes on a shared 2-core machine
def test_an_fp8_run_moves_fp8_versions_and_replays(tmp_path: Path) -> None:
    recipe = tmp_path / "fp8.toml"
    text = TINY.read_text()
    assert "max_versions = 3\n" in text and "[staleness]" in text  # max_lag 1: version 2
    # requeues what version 0 sampled, so the producer generates from a later FP8 version
    recipe.write_text(text.replace("[staleness]", '[weights]\ndtype = "float8_e4m3fn"\n\n'
                                   "[staleness]"))
    log_url, run_id = str(tmp_path / "log"), f"fp8-{uuid.uuid4().hex[:8]}"
    out = streamrl("run", str(recipe), "--log", log_url, "--run", run_id, "--runs-dir",
                   str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    streams = RunStreams(run_id)

    async def check() -> None:
        async with open_log(log_url) as log:
            announced = [decode_event(r.value, "weights")
                         for r in await log.read_all(streams.weights)]
            assert [a.version for a in announced] == [0, 1, 2, 3]
            for a in announced:
                assert a.quantization == SCHEME and a.quantized_digest != a.digest
            events = [decode_event(r.value, "events") for r in await log.read_all(streams.events)]
            # The transports' files are released when the run ends; what they held is the
            # quantization of the trainer's weights, which the run's checkpoints hold: version
            # 0's is the initial checkpoint, 2 and 3 were saved. Both digests match.
            saved = {e.version: Path(e.path) for e in events if isinstance(e, CheckpointSaved)}
            init = context_from_event(next(e for e in events if isinstance(e, RunStarted)))
            for version, path in ((0, init.init_checkpoint), (2, saved[2]), (3, saved[3])):
                weights = read_safetensors(path)
                assert announced[version].digest == weights_digest(weights)
                fp8 = quantize_state(weights)
                assert fp8["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
                assert announced[version].quantized_digest == weights_digest(fp8)
                assert announced[version].num_bytes == tensor_bytes(fp8)
            loaded = {e.version for e in events if isinstance(e, WeightVersionLoaded)}
            assert loaded - {0}  # the producer's engine loaded (digest-checked) FP8 versions ...
            versions = set()
            for record in await log.read_all(streams.trajectories):
                batch = decode_trajectory_record(record)
                for row in batch.column("response_versions").to_pylist():
                    versions.update(row)
            assert versions - {0}  # ... and generated from them
            report = await replay_exact(log, run_id)
            assert report.ok and report.num_reproduced == 3, report
            audit = await audit_run(log, run_id)
            assert audit.ok, [v for c in audit.checks for v in c.violations]

    aio.run(check())
