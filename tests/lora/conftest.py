"""A tiny transformers-written dense checkpoint and random adapters for the LoRA tests."""

from __future__ import annotations

import pytest
import torch

from streamrl.models import load_checkpoint
from streamrl.models.lora import LoraSpec, adapter_version, add_lora
from tests.models.tiny import Tiny, build


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    """Every test here runs tiny models: one intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def dense(tmp_path_factory) -> Tiny:
    return build(tmp_path_factory.mktemp("lora-dense"), moe=False, seed=0)


def random_adapter(tiny: Tiny, spec: LoraSpec, seed: int) -> dict[str, torch.Tensor]:
    """A LoRA weight version with nonzero B (as after training), seeded."""
    model = add_lora(load_checkpoint(tiny.path), spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return {k: v.clone() for k, v in adapter_version(model, spec).items()}
