"""The W4A16 Triton kernel against the torch path (dequantize, then matmul): compiled on CUDA,
under Triton's CPU interpreter without a GPU, so CI checks the same kernel code."""

from __future__ import annotations

import os

import pytest
import torch

# Must precede the kernel's import (Triton decides at build); see tests/engine/test_cuda_kernels.py.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from streamrl.models.int4_kernel import w4a16_matmul
from streamrl.models.quant import dequantize_packed, pack_int4, quantize_int4, w4a16_linear

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(("m", "dtype"), [(3, torch.float32), (70, torch.float32),
                                          (5, torch.bfloat16)])
def test_w4a16_kernel_matches_dequantize_then_matmul(m: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(m)
    n, k, group = 96, 128, 32  # N not a multiple of the 64-wide tile: masked edges
    q, scales = quantize_int4(torch.randn(n, k, generator=g), group)
    qweight = pack_int4(q).to(DEVICE)
    scales = scales.to(DEVICE)
    x = torch.randn(m, k, generator=g).to(DEVICE, dtype)
    got = w4a16_matmul(x, qweight, scales, group)
    ref = x.double() @ dequantize_packed(qweight, scales, group, dtype).double().T
    rel = float((got.double() - ref).norm() / ref.norm())
    assert got.dtype == dtype and rel < (1e-5 if dtype == torch.float32 else 2e-2)
    with pytest.raises(ValueError, match="do not fit group_size"):
        w4a16_matmul(x, qweight, scales, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA dispatch needs a GPU")
def test_linear_dispatches_bf16_on_cuda_to_the_kernel() -> None:
    q, scales = quantize_int4(torch.randn(256, 512), 128)
    qweight, scales = pack_int4(q).cuda(), scales.cuda()
    x = torch.randn(4, 7, 512, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)
    got = w4a16_linear(x, qweight, scales, 128, bias)
    ref = torch.nn.functional.linear(x, dequantize_packed(qweight, scales, 128, x.dtype), bias)
    assert got.shape == (4, 7, 256)
    assert float((got.float() - ref.float()).norm() / ref.float().norm()) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bf16 W4A16 engine needs a GPU")
def test_bf16_engine_on_int4_weights_matches_the_bf16_qat_trainer_on_cuda() -> None:
    """The GPU path end to end: the engine's W4A16 Triton matmuls (bf16 activations) against
    the learner's bf16 autocast forward through fake-quantized fp32 masters. Both round in bf16
    at different places, so they agree to bf16 accuracy, far closer than to the unquantized
    weights."""
    from streamrl.consumers.trainer.advantages import grpo
    from streamrl.consumers.trainer.batch import build_batch
    from streamrl.consumers.trainer.learner import Learner, LearnerSetup
    from streamrl.consumers.trainer.losses import decoupled_ppo
    from streamrl.hooks.generation import GenerationRequest, SamplingParams
    from streamrl.models.checkpoint import to_hf_names
    from streamrl.producers.engine import TorchEngine
    from streamrl.recipe.config import TrainerSection
    from streamrl.recipe.engine import EngineConfig
    from streamrl.recipe.trainer import ComputeConfig, Int4Config, QatConfig
    from tests.trainer.helpers import sample, tiny_model

    int4 = Int4Config(group_size=16, targets="linear")
    compute = ComputeConfig(device="cuda", precision="bf16")

    def learner(qat: QatConfig | None) -> Learner:
        return Learner(tiny_model(seed=5), LearnerSetup(
            trainer=TrainerSection(batch_size=2, compute=compute, qat=qat), temperature=1.0,
            advantage=grpo, loss=decoupled_ppo))

    trainer = learner(QatConfig(int4=int4))
    weights = to_hf_names(dict(tiny_model(seed=5).state_dict()), trainer.model_config)
    engine = TorchEngine(tiny_model(seed=5), EngineConfig(
        max_batch_size=2, max_seq_len=64, device="cuda", dtype="bfloat16"))
    engine.use_int4(int4.spec(), weights)
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=1)
    results = engine.generate([GenerationRequest(request_id=f"r{i}", prompt_tokens=p,
                                                 params=params) for i, p in enumerate(prompts)])
    rows = [sample(p, r.response_tokens.tolist(), versions=[0] * len(r.response_tokens),
                   group_id="g", sample_id=r.request_id, logprobs=r.logprobs.tolist())
            for p, r in zip(prompts, results, strict=True)]
    batch = build_batch(rows, trainer.trainer.algorithm.batch).to(torch.device("cuda"))
    with torch.no_grad():
        ours = trainer.logprobs(batch)[batch.loss_mask].float()
        plain = learner(None).logprobs(batch)[batch.loss_mask].float()
    served = batch.old_logprobs[batch.loss_mask].float()
    quantized_gap = float((served - ours).abs().mean())
    print(f"int4 engine vs QAT trainer mean |dlogp| {quantized_gap:.2e}, vs unquantized "
          f"{float((served - plain).abs().mean()):.2e}")
    assert quantized_gap < 2e-2
    assert quantized_gap < float((served - plain).abs().mean())
