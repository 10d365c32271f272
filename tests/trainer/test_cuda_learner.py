"""The trainer's GPU path: fused chunked logprobs (checked on CPU against float64 autograd), the
compute config's errors, and on CUDA a bf16 learner that agrees with the fp32 CPU learner."""

from __future__ import annotations

import copy

import pytest
import torch

from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.models import token_logprobs
from streamrl.models.logprobs import fused_token_logprobs
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig, LossConfig
from tests.trainer.helpers import sample, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _grads(fn, h: torch.Tensor, w: torch.Tensor, g: torch.Tensor):
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    out = fn(h, w)
    (out * g).sum().backward()
    return out.detach(), h.grad, w.grad


@pytest.mark.parametrize(("chunk", "temperature"), [(7, 1.0), (64, 0.6), (1000, 1.3)])
def test_fused_logprobs_match_float64_autograd_values_and_gradients(chunk, temperature) -> None:
    torch.manual_seed(chunk)
    h, w = torch.randn(3, 41, 24) * 2, torch.randn(97, 24)
    t = torch.randint(0, 97, (3, 41))
    g = torch.randn(3, 41)
    ref = _grads(lambda h, w: token_logprobs(h, w, t, temperature=temperature)[0],
                 h.double(), w.double(), g.double())
    got = _grads(lambda h, w: fused_token_logprobs(h, w, t, temperature=temperature,
                                                   chunk_size=chunk), h, w, g)
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == torch.float32
        rel = (a.double() - b).norm() / b.norm()
        assert rel < 1e-5, rel


def test_fused_logprobs_in_bf16_stay_within_bf16_error_and_return_master_dtype_grads() -> None:
    torch.manual_seed(1)
    h, w = torch.randn(64, 32), torch.randn(200, 32) * 0.3
    t, g = torch.randint(0, 200, (64,)), torch.randn(64)
    ref = _grads(lambda h, w: token_logprobs(h, w, t)[0], h.double(), w.double(), g.double())
    got = _grads(lambda h, w: fused_token_logprobs(h, w, t, chunk_size=16,
                                                   compute_dtype=torch.bfloat16), h, w, g)
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    for a, b in zip(got, ref, strict=True):
        assert (a.double() - b).norm() / b.norm() < 2e-2


def test_compute_config_refuses_gpu_options_on_cpu() -> None:
    with pytest.raises(ValueError, match="need a CUDA device"):
        ComputeConfig(device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="logprob_chunk_tokens"):
        ComputeConfig(logprob_chunk_tokens=0)


def _learner(compute: ComputeConfig, model) -> Learner:
    return Learner(copy.deepcopy(model), LearnerSetup(
        trainer=TrainerSection(lr=1e-3, weight_decay=0.0, grad_clip=1.0, minibatches=2,
                               algorithm=AlgorithmConfig(), compute=compute),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo))


def _rows():
    return [sample([1, 2, 3], [4 + i, 5 + i, 6 + i, 7], reward=float(i == 0), group_id="g",
                   sample_id=str(i), logprobs=[-1.0] * 4) for i in range(4)]


@cuda
@pytest.mark.parametrize("options", [{}, {"activation_checkpointing": True},
                                     {"compile": True, "activation_checkpointing": True},
                                     {"compile": True, "compile_scope": "model",
                                      "compile_dynamic": False, "micro_batch_rows": 1,
                                      "attention_backend": "cudnn"}])
def test_bf16_cuda_learner_tracks_the_fp32_cpu_learner(options) -> None:
    """Three versions on CUDA in bf16 (fp32 master weights) end close to the CPU fp32 run:
    same metrics to bf16 tolerance and weights within a small relative distance."""
    model = tiny_model(seed=0)
    cpu = _learner(ComputeConfig(), model)
    gpu = _learner(ComputeConfig(device="cuda", precision="bf16", **options), model)
    assert all(p.dtype == torch.float32 for p in gpu.model.parameters())  # master weights
    for version in range(3):
        m_cpu = cpu.step(_rows(), [1.0] * 4, version)
        m_gpu = gpu.step(_rows(), [1.0] * 4, version)
        assert abs(m_cpu["loss"] - m_gpu["loss"]) < 2e-2 * max(1.0, abs(m_cpu["loss"]))
    state = gpu.hf_state_dict()
    for name, p in cpu.hf_state_dict().items():
        q = state[name].float().cpu()
        assert (q - p).norm() / p.norm() < 2e-2, name
    assert state["model.embed_tokens.weight"].is_cuda


def test_micro_batches_accumulate_to_the_same_step_as_one_pass() -> None:
    """Two minibatches of 2 rows each, split into micro-batches of 1 row (unequal trained
    tokens): the weights and token-weighted metrics equal those of the unsplit step (CPU fp32),
    while a wrong split (plain mean of micro-batch losses) would differ."""
    model = tiny_model(seed=0)
    rows = [sample([1, 2, 3], [4 + i, 5 + i, 6 + i, 7][: 2 + i % 3], reward=float(i == 0),
                   group_id="g", sample_id=str(i), logprobs=[-1.0] * (2 + i % 3))
            for i in range(4)]
    whole = _learner(ComputeConfig(), model)
    micro = _learner(ComputeConfig(micro_batch_rows=1), model)
    for version in range(2):
        m_whole = whole.step(rows, [1.0] * 4, version)
        m_micro = micro.step(rows, [1.0] * 4, version)
        for k in ("loss", "num_tokens", "ratio_mean", "tis_weight_max", "grad_norm"):
            assert abs(m_whole[k] - m_micro[k]) < 1e-5 * max(1.0, abs(m_whole[k])), k
    micro_state = micro.hf_state_dict()
    for name, p in whole.hf_state_dict().items():
        # Adam turns rounding-level gradient differences of near-zero entries into at most
        # ~1e-5 of weight; a wrong split moves weights by the step size (1e-3)
        assert float((micro_state[name] - p).abs().max()) < 5e-5, name
    with pytest.raises(ValueError, match="token_mean"):
        Learner(copy.deepcopy(model), LearnerSetup(
            trainer=TrainerSection(
                lr=1e-3, weight_decay=0.0, grad_clip=1.0, minibatches=1,
                algorithm=AlgorithmConfig(loss_config=LossConfig(aggregation="seq_mean")),
                compute=ComputeConfig(micro_batch_rows=1)),
            temperature=1.0, advantage=grpo, loss=decoupled_ppo))
