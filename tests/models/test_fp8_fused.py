"""The fused decoder with FP8 projections (producers/engine/cuda/decoder.py + `fuse_fp8`): the
same samples as the eager FP8 engine, and a loaded FP8 version seen in place. Without a GPU the
kernels run under Triton's CPU interpreter (tiny shapes; every projection 128 wide so q|k|v and
gate|up fuse), with the FP8 GEMMs on their reference path; on CUDA, graphs replay them."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

# Must precede the kernels' import (as tests/engine/test_cuda_engine.py does).
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from streamrl.models import load_checkpoint
from streamrl.models.checkpoint import read_safetensors
from streamrl.producers.engine import EngineConfig, TorchEngine
from streamrl.weights.fp8 import quantize_state
from tests.engine.engine_util import request
from tests.models.tiny import Tiny, build

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    return build(tmp_path_factory.mktemp("fp8fused"), moe=False, seed=7, hidden_size=128,
                 intermediate_size=256, num_attention_heads=1, num_key_value_heads=1,
                 head_dim=128, num_hidden_layers=2)


def _engine(tiny: Tiny, decode: str) -> TorchEngine:
    config = EngineConfig(max_batch_size=2, max_seq_len=24, decode=decode,
                          device="cuda" if CUDA else "cpu",
                          dtype="bfloat16" if CUDA else "float32", cuda_graphs=CUDA)
    engine = TorchEngine(load_checkpoint(tiny.path), config)
    engine.use_fp8()
    return engine


def test_fused_fp8_decode_matches_the_eager_fp8_engine(tiny: Tiny) -> None:
    fused, eager = _engine(tiny, "fused"), _engine(tiny, "eager")
    assert fused._fused is not None and eager._fused is None
    reqs = [request(f"f{i}", length=4 + i, temperature=0.0, max_new_tokens=6) for i in range(2)]
    a, b = fused.generate(reqs), eager.generate(reqs)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.response_tokens, y.response_tokens)
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=2e-2 if CUDA else 1e-4)
    # a new FP8 version lands in place in the fused weights (and any captured graph)
    other = {k: v * 1.5 if k.endswith("_proj.weight") else v
             for k, v in read_safetensors(tiny.path).items()}
    version = quantize_state(other, keep_dtype=torch.bfloat16 if CUDA else torch.float32)
    fused.load_weights(version, 1)
    eager.load_weights(version, 1)
    assert fused._fused is not None
    a, b = fused.generate(reqs), eager.generate(reqs)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.response_tokens, y.response_tokens)
        assert (x.response_versions == 1).all()
