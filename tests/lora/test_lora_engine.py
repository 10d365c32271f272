"""The torch engine serves LoRA adapters unmerged: a served adapter gives the trainer's LoRA
logprobs, and requests of two adapters (and the base) in one batch get exactly what each gets
alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import load_checkpoint, token_logprobs
from streamrl.models.lora import LoraSpec, add_lora, load_lora
from streamrl.producers.engine import TorchEngine
from streamrl.recipe.engine import EngineConfig
from tests.lora.conftest import random_adapter
from tests.models.tiny import Tiny

PROMPTS = [[5, 17, 42, 7, 99], [3, 3, 250, 11]]
CONFIG = EngineConfig(max_batch_size=8, max_seq_len=64)
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=6, seed=7)


def requests(adapter: str | None, tag: str) -> list[GenerationRequest]:
    return [GenerationRequest(request_id=f"{tag}-{i}", prompt_tokens=p, params=PARAMS,
                              adapter=adapter) for i, p in enumerate(PROMPTS)]


def test_two_adapters_in_one_batch_match_each_alone(dense: Tiny) -> None:
    a = random_adapter(dense, LoraSpec(rank=4, alpha=8), seed=1)
    b = random_adapter(dense, LoraSpec(rank=2, alpha=1, target_modules=("q_proj", "down_proj")),
                       seed=2)
    alone = {}
    for name, tensors in (("a", a), ("b", b), (None, None)):
        engine = TorchEngine(load_checkpoint(dense.path), CONFIG)
        if tensors is not None:
            engine.load_adapter(tensors, name)
        alone[name] = engine.generate(requests(name, str(name)))
    shared = TorchEngine(load_checkpoint(dense.path), CONFIG)
    shared.load_adapter(a, "a")
    shared.load_adapter(b, "b")
    mixed = shared.generate([*requests("a", "a"), *requests(None, "None"), *requests("b", "b")])
    got = {r.request_id: r for r in mixed}
    for results in alone.values():
        for r in results:
            m = got[r.request_id]
            np.testing.assert_array_equal(m.response_tokens, r.response_tokens)
            np.testing.assert_allclose(m.logprobs, r.logprobs, rtol=0, atol=1e-5)
    # the adapters really act: their tokens or logprobs differ from the base's
    for name in ("a", "b"):
        assert any(not np.allclose(x.logprobs, y.logprobs, atol=1e-3) or
                   not np.array_equal(x.response_tokens, y.response_tokens)
                   for x, y in zip(alone[name], alone[None], strict=True))
    with pytest.raises(ValueError, match="unknown adapter 'c'"):
        shared.add_request(requests("c", "c")[0])


def test_served_adapter_gives_the_trainers_logprobs(dense: Tiny) -> None:
    spec = LoraSpec(rank=4, alpha=8)
    adapter = random_adapter(dense, spec, seed=3)
    engine = TorchEngine(load_checkpoint(dense.path), CONFIG)
    engine.load_weights(adapter, 1)  # a LoRA run's version: the run's own adapter
    [result] = engine.generate(requests(None, "r")[:1])
    assert result.response_versions.tolist() == [1] * len(result.response_tokens)
    trainer = add_lora(load_checkpoint(dense.path), spec)
    load_lora(trainer, adapter)
    tokens = torch.tensor([PROMPTS[0] + result.response_tokens.tolist()])
    positions = torch.arange(tokens.shape[1])[None]
    with torch.no_grad():
        hidden = trainer(tokens, positions, return_hidden=True).hidden
        lp = token_logprobs(hidden[:, :-1], trainer.lm_head.weight, tokens[:, 1:])[0][0]
    np.testing.assert_allclose(lp[len(PROMPTS[0]) - 1:].numpy(), result.logprobs, atol=1e-5)
