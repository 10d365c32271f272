"""The logprobs (and MoE routing) the engine records are what the trainer recomputes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrl.models import CausalLM, ModelConfig
from streamrl.producers.engine import EngineConfig, TorchEngine
from tests.engine.engine_util import LOGPROB_ATOL, engine, request, teacher_forced
from tests.models.tiny import Tiny


@pytest.mark.parametrize(
    "params",
    [dict(temperature=1.0), dict(temperature=0.7), dict(temperature=0.8, top_k=20, top_p=0.9)],
    ids=["t1", "t0.7", "t0.8-topk-topp"],
)
def test_engine_logprobs_equal_trainer_logprobs(tiny: Tiny, params: dict) -> None:
    """Continuous batching of prompts of different lengths (5 requests, 3 slots); for every
    response token the engine's logprob equals log_softmax(logits / T) of a teacher-forced
    forward over prompt + response, also when top-k/top-p truncated the sampling (the logprob
    is taken before truncation). For MoE, the recorded routing row i equals the routing of the
    position that scores token i (P-1+i)."""
    eng = engine(tiny.path, max_batch_size=3)
    results = eng.generate(
        [request(f"r{i}", length=3 + 4 * i, max_new_tokens=16, **params) for i in range(5)]
    )
    worst = 0.0
    for r in results:
        logp, routed, _ = teacher_forced(eng.model, r, params["temperature"])
        worst = max(worst, float(np.abs(logp - r.logprobs).max()))
        if routed is None:
            assert r.routed_experts is None
            continue
        P, cfg = len(r.prompt_tokens), eng.model.config
        assert r.routed_experts.dtype == np.uint8
        assert r.routed_experts.shape == (r.num_response_tokens, 2, cfg.num_experts_per_tok)
        np.testing.assert_array_equal(r.routed_experts, routed[P - 1 : -1])
    assert worst <= LOGPROB_ATOL


def test_moe_forced_routing_replays_engine_logprobs(moe: Tiny) -> None:
    """The trainer's replay: the recorded rows forced onto positions P-1..P+R-2 through
    `routing_mask` (prompt positions route freely, the last position scores nothing); the
    forward uses exactly the recorded experts there and the logprobs still match."""
    eng = engine(moe.path)
    (r,) = eng.generate([request("replay", length=7, temperature=1.0, max_new_tokens=20)])
    P = len(r.prompt_tokens)
    logp, replayed, _ = teacher_forced(eng.model, r, 1.0, replay=True)
    np.testing.assert_array_equal(replayed[P - 1 : -1], r.routed_experts)
    assert np.abs(logp - r.logprobs).max() <= LOGPROB_ATOL


def test_routing_of_more_than_256_experts_is_uint16() -> None:
    """The trajectory schema's wide routing column: expert ids >= 256 survive."""
    torch.manual_seed(0)
    config = ModelConfig(
        model_type="qwen3_moe",
        vocab_size=300,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=300,
        num_experts_per_tok=4,
        moe_intermediate_size=8,
    )
    eng = TorchEngine(CausalLM(config).eval(), EngineConfig(max_batch_size=2, max_seq_len=64))
    (r,) = eng.generate([request("wide", length=9, max_new_tokens=24)])
    _, own, _ = teacher_forced(eng.model, r, 1.0)
    P = len(r.prompt_tokens)
    assert r.routed_experts.dtype == np.uint16 and r.routed_experts.shape == (24, 1, 4)
    np.testing.assert_array_equal(r.routed_experts, own[P - 1 : -1])
    assert int(r.routed_experts.max()) >= 256
