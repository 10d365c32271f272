"""FP8 training (`[trainer.compute] precision = "fp8"`, consumers/trainer/fp8.py): refused
where it cannot run, and on an H100 with torchao a learner step whose weights, checkpoint names
and logprobs stay those of the bf16 learner."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.fp8 import trains_in_fp8
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.models import CausalLM, ModelConfig
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None


def _config(**overrides) -> ModelConfig:
    return ModelConfig(**{**dict(model_type="qwen3", vocab_size=512, hidden_size=256,
                                 intermediate_size=512, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                 max_position_embeddings=256, tie_word_embeddings=False),
                          **overrides})


def test_fp8_precision_is_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match=r"precision='fp8'.*need a CUDA device"):
        ComputeConfig(precision="fp8")


@pytest.mark.skipif(HAS_TORCHAO, reason="torchao is installed here")
def test_fp8_precision_without_torchao_says_how_to_get_it() -> None:
    with pytest.raises(ValueError, match=r"torchao is not installed here: pip install torchao"):
        ComputeConfig(device="cuda", precision="fp8")


def test_only_the_projections_train_in_fp8() -> None:
    """Attention and MLP projections; not the LM head, the embedding or the norms."""
    model = CausalLM(_config())
    picked = [name for name, m in model.named_modules() if trains_in_fp8(m, name)]
    assert len(picked) == 2 * 7 and all(n.endswith("_proj") for n in picked)
    assert "lm_head" not in picked


def _learner(precision: str) -> Learner:
    torch.manual_seed(0)
    compute = ComputeConfig(device="cuda", precision=precision)
    return Learner(CausalLM(_config()), LearnerSetup(
        trainer=TrainerSection(lr=1e-5, batch_size=8, compute=compute,
                               algorithm=AlgorithmConfig()),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo))


@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TORCHAO),
                    reason="FP8 training needs a CUDA GPU (Hopper) and torchao")
def test_fp8_learner_steps_with_the_bf16_learners_weights() -> None:
    """The projections become torchao Float8Linear; the state dict keeps its names and fp32
    master weights; proximal logprobs are within FP8 error of the bf16 learner's on the same
    weights; a step trains (finite loss, weights move) and the version digests."""
    from torchao.float8.float8_linear import Float8Linear

    from bench.trainer_mfu import samples
    from streamrl.consumers.trainer.batch import build_batch
    from streamrl.weights import weights_digest

    bf16, fp8 = _learner("bf16"), _learner("fp8")
    assert sum(isinstance(m, Float8Linear) for m in fp8.model.modules()) == 14
    a, b = bf16.hf_state_dict(), fp8.hf_state_dict()
    assert sorted(a) == sorted(b)
    assert all(b[k].dtype == torch.float32 and torch.equal(a[k], b[k]) for k in a)
    rows = samples(8, 32, 96, 512)
    batch = build_batch(rows, fp8.trainer.algorithm.batch).to(fp8.compute.torch_device)
    with torch.no_grad():
        lp_bf16, lp_fp8 = bf16.logprobs(batch).float(), fp8.logprobs(batch).float()
    mask = batch.loss_mask.bool()
    diff = (lp_bf16 - lp_fp8).abs()[mask]
    assert float(diff.mean()) < 0.05 and float(diff.max()) < 0.5, (diff.mean(), diff.max())
    metrics = fp8.step(rows, [1.0] * 8, version=0)
    assert np.isfinite(metrics["loss"])
    after = fp8.hf_state_dict()
    assert any(not torch.equal(after[k], b[k]) for k in b)
    assert len(weights_digest(after)) == 64
