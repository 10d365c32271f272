"""The fused MoE decode on a GPU in bf16, where the experts run as `torch._grouped_mm` (sm90+)
inside captured CUDA graphs: graph replay equals launching kernel by kernel, routing included,
and a weight update reaches the stacked experts that the graphs read."""

from __future__ import annotations

import pytest
import torch

from streamrl.models import load_checkpoint
from streamrl.models.checkpoint import read_safetensors
from streamrl.producers.engine import EngineConfig, TorchEngine
from tests.engine.engine_util import request
from tests.models.tiny import Tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def engine(tiny: Tiny, **config) -> TorchEngine:
    config = {"max_batch_size": 4, "max_seq_len": 48, "decode": "fused", "dtype": "bfloat16",
              **config}
    return TorchEngine(load_checkpoint(tiny.path), EngineConfig(device="cuda", **config))


def reqs(tag: str = "m", num: int = 6) -> list:
    return [request(f"{tag}{i}", length=3 + 2 * i, max_new_tokens=6 + i % 3,
                    temperature=[0.0, 1.0][i % 2]) for i in range(num)]


def test_moe_graph_replay_equals_kernel_by_kernel_launches(moe: Tiny) -> None:
    graphs, launched = engine(moe), engine(moe, cuda_graphs=False)
    replayed, expected = graphs.generate(reqs()), launched.generate(reqs())
    assert graphs._fused._captured  # the MoE step was captured, not run eagerly
    for a, b in zip(expected, replayed, strict=True):
        assert a.response_tokens.tolist() == b.response_tokens.tolist()
        assert a.logprobs.tolist() == b.logprobs.tolist()
        assert (a.routed_experts == b.routed_experts).all()


def test_moe_weight_updates_reach_the_captured_experts(moe: Tiny, moe_next: Tiny) -> None:
    eng = engine(moe)
    eng.generate(reqs("old", 2))  # captures with the old weights
    eng.load_weights(read_safetensors(moe_next.path), version=1)  # HF per-expert names
    fresh = engine(moe_next).generate(reqs(num=3))
    for a, b in zip(fresh, eng.generate(reqs(num=3)), strict=True):
        assert b.response_versions.tolist() == [1] * b.num_response_tokens
        assert a.response_tokens.tolist() == b.response_tokens.tolist()
        assert (a.routed_experts == b.routed_experts).all()
