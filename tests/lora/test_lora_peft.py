"""Interop with PEFT: our adapters load with `peft` onto the transformers model and give our
logits (fp32, CPU, 1e-5), and a PEFT-made adapter loads into ours and starts a run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from streamrl.consumers.trainer.advantages import grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.losses import decoupled_ppo
from streamrl.models import load_checkpoint
from streamrl.models.lora import LoraSpec, add_lora, load_lora
from streamrl.models.lora_files import load_peft, save_peft
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import LoraConfig
from streamrl.weights import weights_digest
from tests.lora.conftest import random_adapter
from tests.models.tiny import Tiny

peft = pytest.importorskip("peft")

TOKENS = torch.tensor([[5, 17, 42, 7, 99, 3, 250, 11, 64, 1]])


def our_logits(tiny: Tiny, spec: LoraSpec, adapter: dict[str, torch.Tensor]) -> torch.Tensor:
    model = add_lora(load_checkpoint(tiny.path), spec)
    load_lora(model, adapter)
    with torch.no_grad():
        return model(TOKENS, torch.arange(TOKENS.shape[1])[None]).logits


def test_our_adapter_loads_in_peft_with_the_same_logits(dense: Tiny, tmp_path: Path) -> None:
    spec = LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj"))
    adapter = random_adapter(dense, spec, seed=5)
    save_peft(adapter, spec, tmp_path / "adapter", base_model=str(dense.path))
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(dense.ref), tmp_path / "adapter")
    with torch.no_grad():
        expected = theirs(TOKENS).logits
        base = dense.ref(TOKENS).logits
    ours = our_logits(dense, spec, adapter)
    assert (expected - base).abs().max() > 1e-2  # the adapter changes the logits
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_a_peft_adapter_starts_a_run(dense: Tiny, tmp_path: Path) -> None:
    config = peft.LoraConfig(r=2, lora_alpha=6, target_modules="all-linear",
                             init_lora_weights=False)  # random B: not a no-op
    made = peft.get_peft_model(copy.deepcopy(dense.ref), config)
    made.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        expected = made(TOKENS).logits
    tensors, spec = load_peft(tmp_path / "theirs")
    assert (spec.rank, spec.alpha) == (2, 6.0)
    torch.testing.assert_close(our_logits(dense, spec, tensors), expected, rtol=0, atol=1e-5)

    # [trainer.lora] init = that directory: the learner's first version is that adapter
    lora = LoraConfig(rank=2, alpha=6, init=str(tmp_path / "theirs"))
    setup = LearnerSetup(trainer=TrainerSection(batch_size=4, lora=lora), temperature=1.0,
                         advantage=grpo, loss=decoupled_ppo)
    learner = Learner.from_checkpoint(dense.path, setup)
    assert weights_digest(learner.hf_state_dict()) == weights_digest(tensors)
    with pytest.raises(ValueError, match=r"set \[trainer\.lora\] to the same"):
        Learner.from_checkpoint(dense.path, LearnerSetup(
            trainer=TrainerSection(batch_size=4, lora=LoraConfig(rank=8, init=lora.init)),
            temperature=1.0, advantage=grpo, loss=decoupled_ppo))
