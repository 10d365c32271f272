"""The engine's FP8 linear (streamrl/models/fp8_linear.py): its numerics on CPU, the engine
running an FP8 run's versions, and (CUDA only) the FP8 GEMM against the reference path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamrl.models import fp8_linear, load_checkpoint, token_logprobs
from streamrl.models.checkpoint import read_safetensors
from streamrl.models.fp8_linear import (
    Fp8Linear,
    fp8_layers,
    quantize_activation,
    reference_fp8_linear,
)
from streamrl.producers.engine import EngineConfig, TorchEngine
from streamrl.producers.engine.packing import packed_buffer
from streamrl.weights.fp8 import quantize_blocks, quantize_state
from tests.engine.engine_util import request, teacher_forced
from tests.models.tiny import Tiny, build

# FP8 (e4m3, W8A8) engine logprobs vs the unquantized (fp32) engine's weights scoring the same
# tokens, on the tiny model below (measured: mean 0.12, max 0.6 over 4 x 16 sampled tokens).
# Its random init is deliberately sharp (tests/models/tiny.py), so FP8 error is amplified
# well beyond a trained checkpoint's; bench/fp8_rollout.py measures real shapes on the GPU.
MEAN_LOGPROB_TOL = 0.25
MAX_LOGPROB_TOL = 1.2


@pytest.fixture(scope="module")
def tiny128(tmp_path_factory) -> Tiny:
    """Projections of whole and partial 128-blocks: q/o 128x128, k/v 64x128, MLP 320x128."""
    return build(tmp_path_factory.mktemp("fp8"), moe=False, seed=5, hidden_size=128,
                 intermediate_size=320, head_dim=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls (tests/conftest.py)


def _engine(path) -> TorchEngine:
    """fp32 on CPU, so the only difference between two engines is the FP8 projections (an
    fp32 engine matches its teacher-forced logprobs to 1e-5; a bf16 one only to ~0.1)."""
    return TorchEngine(load_checkpoint(path), EngineConfig(max_batch_size=4, max_seq_len=64))


def test_activation_scales_are_per_token_and_128_block() -> None:
    """Token 0's two 128-blocks have amax 448 and 4.48 (scales 1 and 0.01); token 1 is all
    zero (scale 1, zeros): every value comes back within e4m3's half-ulp (2^-4 relative)."""
    x = torch.zeros(2, 200)
    x[0, :128] = torch.linspace(-448, 448, 128)
    x[0, 128:] = torch.linspace(-4.48, 4.48, 72)
    q, s = quantize_activation(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (2, 2)
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.01], [1.0, 1.0]]))
    back = q.float() * s.repeat_interleave(128, 1)[:, :200]
    assert ((back - x).abs() <= x.abs() / 16 + 1e-6).all()
    assert (q[1].float() == 0).all()


def test_fp8_linear_matches_a_float_linear_within_e4m3_error() -> None:
    """W8A8 with per-block scales: relative error of the output ~3% (each operand rounds to 3
    mantissa bits), bias added in full precision; the reference path on CPU."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(300, 200)
    fp8 = Fp8Linear(300, 200, bias=linear.bias, device=torch.device("cpu"))
    fp8.set_weight(*quantize_blocks(linear.weight))
    x = torch.randn(3, 5, 300)
    with torch.no_grad():
        want, got = linear(x), fp8(x)
    assert got.shape == (3, 5, 200) and fp8.path == "reference"
    assert float((got - want).norm() / want.norm()) < 0.06


def test_fp8_engine_logprobs_stay_near_the_unquantized_engine(tiny128: Tiny) -> None:
    """An FP8 engine (every projection W8A8; embeddings, norms and LM head unquantized)
    samples; the unquantized engine's model scores the same tokens teacher-forced: the
    logprobs agree within the tolerance above, and the engine recorded its own (FP8) model's
    logprobs, not the unquantized one's."""
    ref = _engine(tiny128.path)
    fp8 = _engine(tiny128.path)
    fp8.use_fp8()
    assert len(fp8_layers(fp8.model)) == 3 * 7  # q k v o gate up down per layer
    results = fp8.generate([request(f"r{i}", length=5 + i, temperature=1.0, max_new_tokens=16)
                            for i in range(4)])
    own, other = [], []
    for r in results:
        own.append(np.abs(teacher_forced(fp8.model, r, 1.0)[0] - r.logprobs))
        other.append(np.abs(teacher_forced(ref.model, r, 1.0)[0] - r.logprobs))
    delta, self_delta = np.concatenate(other), np.concatenate(own)
    assert delta.mean() < MEAN_LOGPROB_TOL and delta.max() < MAX_LOGPROB_TOL, (
        delta.mean(), delta.max())
    # The engine's own model reproduces what it recorded, except where a decode step and a
    # full forward round one activation to neighbouring e4m3 values (inputs equal to ~1e-6)
    # and the KV cache carries that on: far closer than the unquantized model.
    assert np.median(self_delta) < 1e-4 and self_delta.mean() < delta.mean() / 4


def test_engine_loads_an_fp8_version_as_its_own_quantization(tiny128: Tiny) -> None:
    """The trainer's published FP8 version of the checkpoint (`quantize_state`) loaded at
    version 1 gives the very engine `use_fp8` makes from the same weights: the same greedy
    tokens and logprobs, the version stamped on every token."""
    own = _engine(tiny128.path)
    packed = packed_buffer(own.model).numel()
    own.use_fp8()
    # the bf16 projections' bytes are freed: only embeddings, norms and head stay packed
    assert packed_buffer(own.model).numel() < packed / 3
    loaded = _engine(tiny128.path)
    # keep_dtype: this CPU engine is fp32 (a run's GPU engine is bf16, as the kept tensors)
    loaded.load_weights(quantize_state(read_safetensors(tiny128.path), keep_dtype=torch.float32),
                        version=1)
    assert loaded.version == 1 and len(fp8_layers(loaded.model)) == 21
    reqs = [request(f"g{i}", length=6, temperature=0.0, max_new_tokens=10) for i in range(2)]
    a, b = own.generate(reqs), loaded.generate(reqs)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.response_tokens, y.response_tokens)
        np.testing.assert_array_equal(x.logprobs, y.logprobs)
        assert (y.response_versions == 1).all()


def test_a_bad_fp8_version_is_refused_before_anything_is_written(tiny128: Tiny) -> None:
    """A version whose fp8 weight lost its scale is refused naming the tensor; the engine keeps
    its weights and version."""
    eng = _engine(tiny128.path)
    eng.use_fp8()
    before = {k: v.clone() for k, v in eng.model.state_dict().items()}
    bad = quantize_state(read_safetensors(tiny128.path))
    del bad["model.layers.1.mlp.down_proj.weight_scale_inv"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        eng.load_weights(bad, version=1)
    assert eng.version == 0
    for k, v in eng.model.state_dict().items():
        assert torch.equal(v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v,
                           before[k].view(torch.uint8) if v.dtype == torch.float8_e4m3fn
                           else before[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the FP8 GEMM needs a CUDA GPU")
@pytest.mark.parametrize("rows", [1, 7, 64, 300])
def test_cuda_fp8_gemm_matches_the_reference_path(rows: int) -> None:
    """On an H100: one blockwise-scaled `scaled_mm` (1x128 activations, 128x128 weights) at a
    Qwen3 projection shape gives the reference path's output to bf16 rounding, without falling
    back."""
    torch.manual_seed(0)
    N, K = 1024, 4096
    w = torch.randn(N, K, device="cuda") * 0.02
    fp8 = Fp8Linear(K, N, bias=None, device=torch.device("cuda"))
    fp8.set_weight(*quantize_blocks(w))
    x = torch.randn(rows, K, device="cuda", dtype=torch.bfloat16)
    assert fp8.path == "scaled_mm"
    got = fp8(x)
    assert fp8.fallback is None, fp8.fallback
    want = reference_fp8_linear(x, fp8.weight, fp8.weight_scale_inv, None)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    # the compiled activation quantizer the layer used is the eager one, bit for bit
    assert fp8_linear._COMPILE_FAILED is None, fp8_linear._COMPILE_FAILED
    (q1, s1), (q2, s2) = fp8_linear._gemm_operand(x), fp8_linear.gemm_operand(x)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
    assert s1.stride() == (1, s1.shape[0])


def test_the_rollout_bench_runs_and_records(tmp_path, monkeypatch) -> None:
    """bench/fp8_rollout.py end to end on a CPU smoke shape (FP8 on the reference path), so the
    GPU call does not fail on the script itself; its section reads the figures back."""
    from bench import fp8_rollout

    monkeypatch.setattr(fp8_rollout, "RESULTS", tmp_path / "results")
    sections = {}
    monkeypatch.setattr(fp8_rollout, "replace_section",
                        lambda name, body: sections.__setitem__(name, body))
    data = json.loads(fp8_rollout.run(tmp_path, quick=True, device="cpu").read_text())
    rows = data["shapes"]["smoke"]["rows"]
    assert [r["variant"] for r in rows] == ["bf16 fused", "bf16 eager", "fp8 fused", "fp8 eager"]
    assert all(r["tokens"] == 4 * 4 for r in rows), rows
    assert rows[2]["paths"] == rows[3]["paths"] == ["reference"]
    sync = data["shapes"]["smoke"]["weight_sync"]
    assert 0.25 < sync["fp8_bytes"] / sync["bf16_bytes"] < 0.9
    fp8_rollout.record(tmp_path / "fp8_rollout.json")
    assert "| smoke | 4 |" in sections["fp8_rollout"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the FP8 engine path needs a CUDA GPU")
def test_cuda_fp8_engine_samples_near_the_bf16_engine(tmp_path) -> None:
    """On an H100: a bf16 engine and an FP8 one (every dimension a multiple of 128, so every
    projection takes the FP8 GEMM, none falls back) on the same weights; the FP8 engine's
    logprobs against the bf16 model's teacher-forced ones stay within the CPU test's bounds."""
    tiny = build(tmp_path, moe=False, seed=6, hidden_size=256, intermediate_size=512,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=128)

    def cuda_engine() -> TorchEngine:
        return TorchEngine(load_checkpoint(tiny.path), EngineConfig(
            max_batch_size=4, max_seq_len=64, device="cuda", dtype="bfloat16", decode="eager"))

    ref, fp8 = cuda_engine(), cuda_engine()
    fp8.use_fp8()
    results = fp8.generate([request(f"c{i}", length=5 + i, temperature=1.0, max_new_tokens=16)
                            for i in range(4)])
    layers = fp8_layers(fp8.model).values()
    assert {m.path for m in layers} == {"scaled_mm"}, {m.fallback for m in layers}
    delta = np.concatenate([np.abs(_scored_on_device(ref.model, r) - r.logprobs)
                            for r in results])
    assert delta.mean() < MEAN_LOGPROB_TOL and delta.max() < MAX_LOGPROB_TOL, (
        delta.mean(), delta.max())


def _scored_on_device(model, result) -> np.ndarray:
    """`teacher_forced` for a model on any device: log p(response token) [R] at temperature 1."""
    device = next(model.parameters()).device
    P = len(result.prompt_tokens)
    tokens = torch.from_numpy(np.concatenate([result.prompt_tokens, result.response_tokens]))
    tokens = tokens.long().to(device)
    with torch.inference_mode():
        out = model(tokens[None], torch.arange(len(tokens), device=device)[None],
                    return_hidden=True)
        logp, _ = token_logprobs(out.hidden[0, P - 1 : -1], model.lm_head.weight, tokens[P:],
                                 temperature=1.0)
    return logp.float().cpu().numpy()
