"""Which adapter generated each sample of a LoRA run is in the trajectory already: every weight
version of a LoRA run is an adapter announced inline (docs/lora.md), and each response token
records the version that sampled it (`response_versions`). So the audit resolves a sample to
the exact adapter, digest-checked, from the log alone: that adapter on the base reproduces the
sample, another version does not, and a version that was never announced is flagged. No
separate adapter column is needed (docs/lora.md says why)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import torch

from streamrl.audit import load_run
from streamrl.audit.checks_versions import check_digests, check_reported_versions
from streamrl.hooks.generation import GenerationRequest, GenerationResult, SamplingParams
from streamrl.log import open_log
from streamrl.models import load_checkpoint
from streamrl.models.config import ModelConfig
from streamrl.models.lora import LoraSpec, is_adapter
from streamrl.models.lora_files import run_adapter
from streamrl.producers.engine import TorchEngine
from streamrl.recipe.config import load_recipe
from streamrl.recipe.context import RunContext
from streamrl.recipe.engine import EngineConfig
from streamrl.schemas import Sample, encode_event, encode_trajectories, samples_to_batch
from streamrl.schemas.ids import group_id_for, sample_id_for
from streamrl.weights import open_transport
from streamrl.weights.inline import INLINE, load_inline, publish_version
from tests.helpers import TINY
from tests.lora.conftest import random_adapter
from tests.models.tiny import Tiny

RUN = "lora-lineage"
PROMPT = [5, 17, 42, 7, 99]
CONFIG = EngineConfig(max_batch_size=4, max_seq_len=32)


def generate(engine: TorchEngine, seed: int) -> GenerationResult:
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=seed)
    [result] = engine.generate([GenerationRequest(request_id=f"r{seed}", prompt_tokens=PROMPT,
                                                  params=params)])
    return result


def row(offset: int, result: GenerationResult, seed: int) -> Sample:
    group = group_id_for(0, offset)
    now = datetime.now(UTC)
    return Sample(
        run_id=RUN, sample_id=sample_id_for(group, 0), group_id=group, prompt_id=f"p{offset}",
        sample_index=0, producer_id="producer-0",
        policy_version=int(result.response_versions[0]),
        prompt_tokens=np.asarray(PROMPT, np.int32), response_tokens=result.response_tokens,
        logprobs=result.logprobs, loss_mask=np.ones(len(result.response_tokens), bool),
        reward=0.0, finish_reason=result.finish_reason, seed=seed, started_at=now,
        finished_at=now, response_versions=result.response_versions)


async def test_the_audit_tells_which_adapter_made_each_sample(dense: Tiny, tmp_path: Path
                                                              ) -> None:
    recipe = tmp_path / "lora.toml"
    recipe.write_text(TINY.read_text().replace("lr = 1e-3\n",
                                               "lr = 1e-2\nlora = { rank = 4, alpha = 8 }\n"))
    config, _ = load_recipe(recipe)
    lora = config.trainer.lora
    assert lora is not None
    ctx = RunContext(run_id=RUN, config=config, init_checkpoint=dense.path, run_dir=tmp_path)
    # version 0 is the run's starting adapter (B = 0: the base's outputs), version 1 a trained one
    versions = {0: run_adapter(dense.path, ModelConfig.from_file(dense.path), lora.spec(),
                               lora.init),
                1: random_adapter(dense, LoraSpec(rank=4, alpha=8), seed=1)}

    # A producer as `streamrl run` makes one: its first version's adapter on the base, then v1.
    engine = TorchEngine(load_checkpoint(dense.path), CONFIG)
    engine.load_adapter(versions[0])
    made = [(generate(engine, seed), seed) for seed in (11, 12)]
    engine.load_weights(versions[1], 1)
    made += [(generate(engine, seed), seed) for seed in (13, 14)]
    rows = [row(i, result, seed) for i, (result, seed) in enumerate(made)]

    async with open_log("memory://") as log:
        for stream in ctx.streams.all().values():
            await log.ensure_stream(stream, 1)
        await log.append(ctx.streams.events, encode_event(ctx.run_started(str(recipe))))
        with open_transport("file", directory=tmp_path / "weights") as transport:
            for v, tensors in versions.items():
                published = publish_version(transport, v, tensors, inline_max_bytes=1 << 20)
                await log.append(ctx.streams.weights, encode_event(
                    published.announce(run_id=RUN, parent=v - 1 if v else None)))
        for sample in rows:
            await log.append(ctx.streams.trajectories,
                             encode_trajectories(samples_to_batch([sample])), partition=0)
        run = await load_run(log, RUN)

    assert check_reported_versions(run).ok and check_digests(run).ok
    announced = {e.version: e for _, e in run.announced}
    assert [r.policy_version for r in run.rows] == [0, 0, 1, 1]
    for audited, sample in zip(run.rows, rows, strict=True):
        (version,) = set(audited.response_versions)  # one adapter per sample here
        event = announced[version]
        assert event.transport == INLINE
        adapter = load_inline(event)  # digest-checked: the exact tensors, from the log alone
        assert is_adapter(adapter)
        for other, tensors in versions.items():  # that adapter reproduces it; the other not
            fresh = TorchEngine(load_checkpoint(dense.path), CONFIG)
            fresh.load_adapter(tensors)
            again = generate(fresh, sample.seed)
            same = (np.array_equal(again.response_tokens, sample.response_tokens)
                    and np.allclose(again.logprobs, sample.logprobs, atol=1e-5))
            assert same == (other == version), (audited.sample_id, other)
        assert all(torch.equal(adapter[k], versions[version][k]) for k in adapter)

    # a sample claiming a version the run never announced (no adapter to resolve it) is flagged
    first = run.rows[0]
    run.rows.append(msgspec.structs.replace(
        first, policy_version=2, response_versions=(2,) * len(first.response_versions)))
    result = check_reported_versions(run)
    assert not result.ok
    assert [v.code for v in result.violations] == ["unannounced_version"]
