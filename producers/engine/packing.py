"""Pack an engine's weights into one buffer laid out like a cuda_ipc ring slot.

The trainer publishes a version into a slot laid out by `cuda_buffers.layout` (HF names in
`slot_order`, each tensor at an ALIGN boundary). When the engine's parameters sit in one buffer
laid out by that same function for its own HF-named weights, a slot cast to the engine's dtype
is byte for byte the engine's buffer, and loading a version is one contiguous device copy (the
device-copy floor) instead of a multi-tensor copy over ~300 parameters (1.5x the floor on an
H100, BENCHMARKS.md `weight_sync`). `copy_hf_weights` checks the offsets and takes that path.

Side effect the fused decoder relies on: each layer's q/k/v (gate/up) weights become adjacent,
so `fuse_linears` can view them as one matrix instead of copying them into a new one.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from streamrl.models import CausalLM
from streamrl.weights.cuda_buffers import layout

# model -> the uint8 buffer `pack_weights` put its parameters in
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pack_weights(model: CausalLM) -> Tensor | None:
    """Move every parameter of a dense `model` into one new uint8 buffer at the offsets the
    canonical slot layout gives its HF names (values unchanged, bit for bit; each parameter
    keeps its identity and only its `.data` moves; a tied LM head stays the embedding's bytes,
    stored once). Returns the buffer, or None for MoE models (their stacked experts are
    published per expert, so no slot matches them; they keep the multi-tensor copy).

    Call it before anything captures the parameters' addresses (the fused decoder, CUDA graphs):
    their storage changes here."""
    if model.config.is_moe:
        return None
    params = dict(model.named_parameters())  # a tied head appears once, as the embedding
    _, sources = layout(params, None)  # dense parameter names are the HF names
    device = next(iter(params.values())).device
    flat = torch.empty(max((o + n for _, o, n, _ in sources), default=0), dtype=torch.uint8,
                       device=device)
    with torch.no_grad():
        for p, offset, nbytes, dtype in sources:  # `layout` hands back the parameters themselves
            view = flat[offset : offset + nbytes].view(dtype).view(p.shape)
            view.copy_(p)
            p.data = view
    _PACKED[model] = flat
    return flat


def packed_buffer(model: CausalLM) -> Tensor | None:
    """The buffer `pack_weights` made for `model`, or None if it was not packed."""
    return _PACKED.get(model)
