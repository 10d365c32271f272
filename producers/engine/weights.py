"""Copy a new weight version, under HF checkpoint names, into a live model in place.

In place (`Parameter.copy_`) rather than swapping modules: the KV cache, buffers and any
captured graph keep pointing at the same storage, and a tied LM head stays tied.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from streamrl.models import CausalLM
from streamrl.models.checkpoint import from_hf_names


def copy_hf_weights(model: CausalLM, tensors: Mapping[str, Tensor]) -> None:
    """Overwrite every parameter of `model` from `tensors` (HF names, per-expert or fused MoE
    layout, any dtype/device). All names and shapes are checked before anything is written, so
    a bad state dict raises `ValueError` and leaves the model untouched."""
    state = from_hf_names(dict(tensors), model.config)
    params = dict(model.named_parameters())  # a tied LM head appears once, as the embedding
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # as load_checkpoint: a tied head is the embedding
    missing = sorted(params.keys() - state.keys())
    unexpected = sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(
            f"weights do not match the model: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    for name, p in params.items():
        if state[name].shape != p.shape:
            raise ValueError(
                f"weight `{name}` has shape {list(state[name].shape)}, "
                f"the model expects {list(p.shape)}"
            )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])
