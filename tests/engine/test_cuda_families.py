"""Fused decode for every dense family: rotary without q/k norm and with llama3 frequencies in
the kernel, biases in the fused GEMMs, and the engine's samples equal the eager model's for
Llama (llama3 rope, q/k/v/o and MLP biases), Mistral (window >= max_seq_len) and Qwen2 (q/k/v
bias); a window shorter than max_seq_len falls back to eager under "auto" and is refused under
"fused". Without a GPU the kernels run under Triton's CPU interpreter (tiny shapes only); the
bf16 check needs CUDA and skips without it."""

from __future__ import annotations

import os

import pytest
import torch

# Must precede the kernels' import (Triton decides at build) and stay set (Triton reads it
# later too); without a GPU nothing else in the process uses Triton.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from streamrl.models import load_checkpoint
from streamrl.models.layers import RotaryEmbedding, apply_rotary
from streamrl.models.rope import Llama3Rope, inverse_frequencies
from streamrl.producers.engine import EngineConfig, TorchEngine
from streamrl.producers.engine.cuda.fused import qk_norm_rope_cache
from tests.engine.engine_util import assert_same_output, request
from tests.models.tiny import Tiny, build_family

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
FUSED_FAMILIES = ["llama", "mistral", "qwen2"]


@pytest.fixture(scope="module", params=FUSED_FAMILIES)
def family(request, tmp_path_factory) -> Tiny:
    return build_family(tmp_path_factory.mktemp(request.param), request.param, seed=3)


def engine(tiny: Tiny, dtype: str = "float32", **config) -> TorchEngine:
    config = {"max_batch_size": 3, "max_seq_len": 16, "decode": "fused", **config}
    return TorchEngine(load_checkpoint(tiny.path), EngineConfig(device=DEVICE, dtype=dtype,
                                                                **config))


def test_rotary_without_norm_and_with_llama3_frequencies() -> None:
    g = torch.Generator().manual_seed(0)
    n, Hq, Hkv, D, S, L = 3, 4, 2, 16, 4, 70
    scaling = Llama3Rope(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                         original_max_position_embeddings=16)
    qkv = torch.randn(n, (Hq + 2 * Hkv) * D, generator=g).to(DEVICE)
    positions = torch.tensor([0, 33, 69], device=DEVICE)
    dest = torch.tensor([2 * L + 0, 0 * L + 33, 3 * L + 69], device=DEVICE)  # paged: S blocks
    k_cache = torch.full((S, L, Hkv, D), float("nan"), device=DEVICE)
    v_cache = k_cache.clone()
    inv_freq = inverse_frequencies(D, 5e5, scaling, DEVICE)
    assert not torch.equal(inv_freq, inverse_frequencies(D, 5e5, None, DEVICE))
    q = qk_norm_rope_cache(qkv, None, None, inv_freq, 1e-6, k_cache, v_cache, dest, positions,
                           Hq)
    cos, sin = RotaryEmbedding(D, 5e5, scaling)(positions[:, None], torch.float32)
    q_ref, k_ref, _ = qkv[:, None].split([Hq * D, Hkv * D, Hkv * D], dim=-1)
    torch.testing.assert_close(q, apply_rotary(q_ref.view(n, 1, Hq, D), cos, sin)[:, 0],
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_cache.flatten(0, 1)[dest],
                               apply_rotary(k_ref.view(n, 1, Hkv, D), cos, sin)[:, 0],
                               rtol=1e-5, atol=1e-5)


def test_fused_decode_samples_what_the_eager_model_samples(family: Tiny) -> None:
    # Two requests, 3 tokens each: the CPU interpreter costs seconds per decode step.
    reqs = [request(f"f{i}", length=3 + 4 * i, max_new_tokens=3, temperature=[0.0, 1.0][i])
            for i in range(2)]
    fused = engine(family)
    assert fused._fused is not None
    for a, b in zip(engine(family, decode="eager").generate(reqs), fused.generate(reqs),
                    strict=True):
        assert_same_output(a, b)


def test_window_shorter_than_max_seq_len_decodes_eagerly(tmp_path) -> None:
    mistral = build_family(tmp_path, "mistral")  # sliding_window=16
    assert engine(mistral, max_seq_len=48, decode="auto")._fused is None
    with pytest.raises(ValueError, match=r"sliding window \(16\) shorter than max_seq_len"):
        engine(mistral, max_seq_len=48)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_bf16_fused_decode_scores_like_the_eager_model(family: Tiny) -> None:
    reqs = [request(f"b{i}", length=4 + i, max_new_tokens=8, temperature=0.0) for i in range(3)]
    eager = engine(family, dtype="bfloat16", decode="eager").generate(reqs)
    fused = engine(family, dtype="bfloat16", decode="auto")
    assert fused._fused is not None
    for a, b in zip(eager, fused.generate(reqs), strict=True):
        assert abs(a.logprobs - b.logprobs).max() < 0.05
