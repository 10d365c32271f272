"""Copy a new weight version, under HF checkpoint names, into a live model in place.

In place (`Parameter.copy_`) rather than swapping modules: the KV cache, buffers and any
captured graph keep pointing at the same storage, and a tied LM head stays tied.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from streamrl.models import CausalLM
from streamrl.models.checkpoint import checked_state


def copy_hf_weights(model: CausalLM, tensors: Mapping[str, Tensor]) -> None:
    """Overwrite every parameter of `model` from `tensors` (HF names, per-expert or fused MoE
    layout, any dtype/device). All names and shapes are checked before anything is written, so
    a bad state dict raises `ValueError` and leaves the model untouched."""
    params = dict(model.named_parameters())  # a tied LM head appears once, as the embedding
    state = checked_state(dict(tensors), model.config,
                          {name: p.shape for name, p in params.items()}, source="weights")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])
