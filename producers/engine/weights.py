"""Copy a new weight version, under HF checkpoint names, into a live model in place.

In place (`Parameter.copy_`) rather than swapping modules: the KV cache, buffers and any
captured graph keep pointing at the same storage, and a tied LM head stays tied.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
from torch import Tensor

from streamrl.models import CausalLM
from streamrl.models.checkpoint import checked_state

# model -> {(names, ids of the source tensors): (weak refs to the sources, the parameters)}
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def copy_hf_weights(model: CausalLM, tensors: Mapping[str, Tensor]) -> None:
    """Overwrite every parameter of `model` from `tensors` (HF names, per-expert or fused MoE
    layout, any dtype/device). All names and shapes are checked before anything is written, so
    a bad state dict raises `ValueError` and leaves the model untouched.

    Loading the very same source tensors again (cuda_ipc hands out the same views of a ring
    slot for every version it holds) reuses the checked plan: the names and shapes were checked
    for those objects, and the Python walk over ~300 parameters costs more than the copy."""
    key = (tuple(tensors), tuple(map(id, tensors.values())))
    plans = _PLANS.setdefault(model, {})
    plan = plans.get(key)
    if plan is not None:
        alive = [r() for r in plan[0]]
        if all(t is not None for t in alive):
            with torch.no_grad():
                torch._foreach_copy_(plan[1], alive)
            return
    params = dict(model.named_parameters())  # a tied LM head appears once, as the embedding
    state = checked_state(dict(tensors), model.config,
                          {name: p.shape for name, p in params.items()}, source="weights")
    dst, src = list(params.values()), [state[name] for name in params]
    if all(t is tensors.get(n) for n, t in zip(params, src, strict=True)) and \
            all(t.device == p.device for t, p in zip(src, dst, strict=True)):
        if len(plans) >= 4:
            plans.pop(next(iter(plans)))
        plans[key] = ([weakref.ref(t) for t in src], dst)
    with torch.no_grad():
        if all(t.device == p.device for t, p in zip(src, dst, strict=True)):
            # One fused multi-tensor copy (casting to the engine's dtype): on a GPU this is
            # 1.4 ms instead of 6-7 ms of per-tensor launches for Qwen3-0.6B (bench/weight_sync).
            torch._foreach_copy_(dst, src)
        else:
            for p, t in zip(dst, src, strict=True):
                p.copy_(t)

