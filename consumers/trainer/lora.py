"""The learner's LoRA parts (`[trainer.lora]`, docs/lora.md): the adapter put on the model,
the frozen base stored in bf16 when the run computes in bf16, the adapter as the weight version,
and adapter files next to each checkpoint.

A LoRA run's every weight version, version 0 included, is the adapter alone
(`lora_state_dict`): version 0 is the starting adapter (`starting_adapter`: a fresh seeded one
whose B is zero, or `[trainer.lora] init`), and the base stays the run's initial checkpoint,
which trainer and producers load themselves. Checkpoints hold the base (unchanged) plus the
adapter in PEFT's format.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from streamrl.models import CausalLM
from streamrl.models.lora import (
    adapter_version,
    add_lora,
    load_lora,
    lora_layers,
    lora_state_dict,
)
from streamrl.models.lora_files import ADAPTER_WEIGHTS, load_peft, save_peft, starting_adapter
from streamrl.recipe.trainer import ComputeConfig, LoraConfig


def attach(model: CausalLM, lora: LoraConfig) -> None:
    """Put the run's starting adapter on `model` (once: a model that has one keeps it)."""
    if lora_layers(model):
        return
    add_lora(model, lora.spec())
    if lora.init is not None:
        load_lora(model, starting_adapter(model.config, lora.spec(), lora.init))


def store_base(model: CausalLM, compute: ComputeConfig) -> None:
    """The frozen linear weights of the decoder layers in bf16 when the run computes in bf16
    (the adapter stays fp32 with its fp32 AdamW state): about half the base's memory, and
    autocast rounds them to bf16 for every matmul anyway. Embeddings, norms and the LM head
    stay fp32, so the residual stream and the logprobs are computed as in a full run."""
    if compute.precision != "bf16":
        return
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
                module.weight.data = module.weight.data.to(torch.bfloat16)


def adapter_tensors(model: CausalLM, lora: LoraConfig) -> dict[str, Tensor]:
    """The weight version of a LoRA learner: its adapter (A, B and the scale)."""
    return adapter_version(model, lora.spec())


def save_adapter(model: CausalLM, lora: LoraConfig, path: Path) -> None:
    save_peft(lora_state_dict(model), lora.spec(), path)


def load_saved_adapter(model: CausalLM, path: Path) -> None:
    """The adapter a checkpoint directory holds, if any (a run's initial checkpoint has none)."""
    if (Path(path) / ADAPTER_WEIGHTS).is_file():
        load_lora(model, load_peft(path)[0])


@contextlib.contextmanager
def seeded_dropout(lora: LoraConfig, version: int, num_pass: int,
                   compute: ComputeConfig) -> Iterator[None]:
    """Adapter dropout of a step's `num_pass`-th forward with grad, drawn from the RNG seeded
    by (lora.seed, version, num_pass), the global RNG restored after: a replayed step drops the
    same activations."""
    devices = [compute.torch_device] if compute.on_gpu else []
    with torch.random.fork_rng(devices=devices, device_type=compute.torch_device.type):
        torch.manual_seed((lora.seed * 1_000_003 + version) * 1_009 + num_pass)
        yield
