"""LoRA on CUDA (skipped without a GPU): with precision = "bf16" the frozen linear weights are
stored in bf16 and the adapter with its AdamW state in fp32; a step moves the adapter alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamrl.consumers.trainer.advantages import grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.losses import decoupled_ppo
from streamrl.models.checkpoint import save_checkpoint
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import ComputeConfig, LoraConfig
from tests.lora.test_lora_train import rows
from tests.trainer.helpers import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_bf16_base_fp32_adapter_on_cuda(tmp_path: Path) -> None:
    save_checkpoint(tiny_model(seed=1), tmp_path / "init")
    compute = ComputeConfig(device="cuda", precision="bf16")
    setup = LearnerSetup(trainer=TrainerSection(batch_size=4, lr=1e-2, compute=compute,
                                                lora=LoraConfig(rank=4, alpha=8)),
                         temperature=1.0, advantage=grpo, loss=decoupled_ppo)
    learner = Learner.from_checkpoint(tmp_path / "init", setup)
    frozen = [p for n, p in learner.model.named_parameters() if not p.requires_grad]
    trained = [p for p in learner.model.parameters() if p.requires_grad]
    linear = [p for n, p in learner.model.model.layers.named_parameters()
              if n.endswith("proj.weight")]
    assert linear and all(p.dtype == torch.bfloat16 and p.is_cuda for p in linear)
    assert trained and all(p.dtype == torch.float32 for p in trained)
    base = [p.clone() for p in frozen]
    before = {k: v.clone() for k, v in learner.hf_state_dict().items()}
    learner.step(rows(1), [1.0] * 4, version=1)
    after = learner.hf_state_dict()
    assert all(torch.equal(p, b) for p, b in zip(frozen, base, strict=True))
    assert any(not torch.equal(after[k], before[k]) for k in after if ".lora_B." in k)
    assert all(s["exp_avg"].dtype == torch.float32 for s in learner.optimizer.state.values())
