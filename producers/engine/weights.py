"""Copy a new weight version, under HF checkpoint names, into a live model in place.

In place (`Parameter.copy_`) rather than swapping modules: the KV cache, buffers and any
captured graph keep pointing at the same storage, and a tied LM head stays tied.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from streamrl.models import CausalLM
from streamrl.models.checkpoint import checked_state
from streamrl.models.quant import is_int4, load_int4
from streamrl.producers.engine.packing import packed_buffer

Copied = Literal["one copy", "multi-tensor", "per tensor"]


@dataclass(frozen=True)
class _Plan:
    """A checked copy from the very same source tensors into the model's parameters."""

    sources: list[weakref.ref]  # each drops the plan from the cache when its tensor dies
    params: list[Tensor]
    one_copy: tuple[Tensor, Tensor] | None  # (to, from) byte ranges when one copy does it all
    addresses: list[int]  # the parameters' addresses the byte ranges were checked against


# model -> {(names, ids of the source tensors): _Plan}; a plan is in it only while all its
# sources live, so a key found there names exactly the planned tensors (an id is reused only
# after its object died, and the death removed the plan).
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_address = Tensor.data_ptr


def copy_hf_weights(model: CausalLM, tensors: Mapping[str, Tensor]) -> Copied:
    """Overwrite every parameter of `model` from `tensors` (HF names, per-expert or fused MoE
    layout, any dtype/device). All names and shapes are checked before anything is written, so
    a bad state dict raises `ValueError` and leaves the model untouched. Returns how it copied.

    "one copy": the model was packed (`packing.pack_weights`) and every source sits in one
    storage at its parameter's byte offset, in its dtype (a cuda_ipc slot cast to the engine's
    dtype): one device copy of the covered bytes, padding included, which is the copy floor.
    "multi-tensor": one `_foreach_copy_` (casting as needed), on one device. "per tensor": the
    sources are on another device.

    Loading the very same source tensors again (cuda_ipc hands out the same views of a ring
    slot for every version it holds) reuses the checked plan: the names and shapes were checked
    for those objects, and the Python walk over ~300 parameters costs more than the copy.

    A model serving int4 weights (`quant.serve_int4`) takes its int4 modules' weights first,
    quantized from the version's tensors or copied from an int4 payload (`quant.load_int4`)."""
    if is_int4(model):
        tensors = load_int4(model, tensors)
    key = (tuple(tensors), tuple(map(id, tensors.values())))
    plans = _PLANS.setdefault(model, {})
    plan = plans.get(key)
    if plan is not None and plan.one_copy is None:
        return _copy(plan.params, [r() for r in plan.sources], None)  # type: ignore[misc]
    if plan is not None and list(map(_address, plan.params)) == plan.addresses:
        return _copy(plan.params, [], plan.one_copy)
    params = dict(model.named_parameters())  # a tied LM head appears once, as the embedding
    state = checked_state(dict(tensors), model.config,
                          {name: p.shape for name, p in params.items()}, source="weights")
    dst, src = list(params.values()), [state[name] for name in params]
    span = _one_span(model, dst, src)
    with torch.inference_mode(False):  # plain tensors: written in and out of inference mode
        one_copy = None if span is None else (_bytes(dst[0], *span), _bytes(src[0], *span))
    if all(t is tensors.get(n) for n, t in zip(params, src, strict=True)) and \
            all(t.device == p.device for t, p in zip(src, dst, strict=True)):
        if len(plans) >= 4:
            plans.pop(next(iter(plans)))

        def forget(_: weakref.ref, plans: dict = plans, key: tuple = key) -> None:
            plans.pop(key, None)

        plans[key] = _Plan([weakref.ref(t, forget) for t in src], dst, one_copy,
                           list(map(_address, dst)))
    return _copy(dst, src, one_copy)


def _copy(dst: list[Tensor], src: list[Tensor], one_copy: tuple[Tensor, Tensor] | None
          ) -> Copied:
    if one_copy is not None:  # plain uint8 tensors, no autograd to switch off
        one_copy[0].copy_(one_copy[1])
        return "one copy"
    with torch.no_grad():
        if all(t.device == p.device for t, p in zip(src, dst, strict=True)):
            # One fused multi-tensor copy (casting to the engine's dtype): on a GPU this is
            # 1.3 ms instead of 6-7 ms of per-tensor launches for Qwen3-0.6B (bench/weight_sync).
            torch._foreach_copy_(dst, src)
            return "multi-tensor"
        for p, t in zip(dst, src, strict=True):
            p.copy_(t)
        return "per tensor"


def _one_span(model: CausalLM, dst: list[Tensor], src: list[Tensor]) -> tuple[int, int] | None:
    """(first byte, byte count) of the range one copy between the two storages must cover, if
    every source sits at its parameter's byte offset with its dtype and shape, all sources in one
    storage and all parameters in the model's packed buffer (so the bytes between parameters are
    padding nobody reads); else None."""
    packed = packed_buffer(model)
    if packed is None or not dst:
        return None
    packed_at, source_at = packed.untyped_storage().data_ptr(), src[0].untyped_storage().data_ptr()
    lo, hi = None, 0
    for p, t in zip(dst, src, strict=True):
        offset = p.storage_offset() * p.element_size()
        if (p.dtype != t.dtype or p.shape != t.shape or p.device != t.device
                or not (p.is_contiguous() and t.is_contiguous())
                or p.untyped_storage().data_ptr() != packed_at
                or t.untyped_storage().data_ptr() != source_at
                or t.storage_offset() * t.element_size() != offset):
            return None
        lo = offset if lo is None else min(lo, offset)
        hi = max(hi, offset + p.numel() * p.element_size())
    return (lo or 0, hi - (lo or 0))


def _bytes(t: Tensor, first: int, count: int) -> Tensor:
    """`count` bytes of `t`'s storage from byte `first`, as a uint8 tensor."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(
        t.untyped_storage(), first, (count,))
