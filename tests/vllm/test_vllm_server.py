"""Against a real vLLM CPU server (tests/vllm/real.py: one per session, shared with the engine
conformance suite): after a weight update, vLLM's logprobs of its own samples are the trainer's
for the same weights, and a short `streamrl run` generates every sample with vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamrl import aio
from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.log import open_log
from streamrl.models import load_checkpoint
from streamrl.models.checkpoint import read_safetensors
from streamrl.producers.vllm import VLLMConfig, VLLMEngine
from streamrl.recipe.context import load_run_context
from streamrl.schemas import decode_trajectories
from tests.data.tiny_checkpoint import verl_rows, write_dataset
from tests.engine.engine_util import teacher_forced
from tests.helpers import streamrl
from tests.vllm.real import RealVLLM

pytestmark = pytest.mark.slow
# vLLM's fp32 CPU kernels vs our model, same weights (measured: <= 1e-6 nats on this model).
LOGPROB_ATOL = 1e-4


def test_after_a_weight_update_vllms_logprobs_are_the_trainers(vllm_server: RealVLLM) -> None:
    real = vllm_server
    engine = VLLMEngine.from_checkpoint(real.checkpoint, VLLMConfig(url=real.server.url,
                                                                    poll_s=0.01))
    engine.load_weights(read_safetensors(real.next_checkpoint), version=1)
    trainer = load_checkpoint(real.next_checkpoint)  # the trainer's model, the same weights
    requests = [GenerationRequest(request_id=f"t{t}-{i}", prompt_tokens=list(range(3 + i, 19)),
                                  params=SamplingParams(temperature=t, max_new_tokens=24, seed=i))
                for t in (1.0, 0.7) for i in range(3)]
    for result, request in zip(engine.generate(requests), requests, strict=True):
        assert result.response_versions.tolist() == [1] * 24
        ours, _, _ = teacher_forced(trainer, result, temperature=request.params.temperature)
        np.testing.assert_allclose(result.logprobs, ours, rtol=0, atol=LOGPROB_ATOL)
    # the initial weights' model disagrees: the comparison can fail
    before, _, _ = teacher_forced(load_checkpoint(real.checkpoint), result, temperature=0.7)
    assert np.abs(before - result.logprobs).max() > 0.1
    engine.close()


def test_a_short_run_generates_with_vllm(vllm_server: RealVLLM, tmp_path: Path) -> None:
    real = vllm_server
    train = write_dataset(tmp_path / "train.jsonl", verl_rows(8))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'''[run]
name = "vllm-run"
seed = 3
max_versions = 2

[model]
path = "{real.checkpoint}"

[data]
train = "{train}"
samples_per_prompt = 4

[rollout]
reward = "tests.data.tiny_checkpoint:reward"
max_new_tokens = 6
engine_factory = "vllm"
engine_options = {{ url = "{real.server.url}", max_seq_len = {real.max_model_len} }}

[trainer]
batch_size = 8
lr = 1e-3

[staleness]
policy = "streamrl.staleness:MaxLag"
options = {{ max_lag = 0, on_stale = "requeue" }}
''')
    log_url = str(tmp_path / "log")
    out = streamrl("run", str(recipe), "--log", log_url, "--run", "vllm-run", "--runs-dir",
                   str(tmp_path / "runs"), OMP_NUM_THREADS="1", timeout=300)
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    summary = json.loads((tmp_path / "runs" / "vllm-run" / "summary.json").read_text())
    assert summary, "the run wrote its summary"

    async def trajectories() -> list:
        async with open_log(log_url) as log:
            ctx = await load_run_context(log, "vllm-run")
            return [decode_trajectories(r.value)
                    for r in await log.read_all(ctx.streams.trajectories)]

    tables = aio.run(trajectories())
    assert sum(t.num_rows for t in tables) >= 16  # two versions of 8 samples were trained
    versions = {v for t in tables for row in t["response_versions"].to_pylist() for v in row}
    # max_lag 0: version 1 trains only on samples of version 1, which vLLM made after the
    # producer pushed the trained weights to it
    assert versions >= {0, 1}, versions
