"""INT4 weights, symmetric and group-wise: fake quantization for quantization-aware training and
the W4A16 serving path, so rollout and training compute with the very same quantized weights.

A weight [..., out, in] is cut along `in` into groups of `group_size`; each group g of a row has
one scale s = max|w_g| / 7 (fp32; 1 for an all-zero group), and each weight becomes

    q = clamp(round(w / s), -8, 7)          int4, round half to even (torch.round)
    w_q = q * s                             what both sides compute with

Training (`fake_quantize`): the targeted modules compute with w_q in the forward, and the
gradient passes straight through to the fp32 master weights: w + sg(w_q - w) has value w_q and
d/dw = identity (straight-through estimator). Parameters keep their names and identities (the
module's class is swapped for a subclass whose forward quantizes), so checkpoints, optimizer
state and the published weights are the usual fp32 masters.

Serving (`serve_int4`, `load_int4`): the targeted modules are replaced by `Int4Linear` /
`Int4Experts`, which hold the packed weights (two int4 per uint8, low nibble = even column,
two's complement) and the fp32 scales, and dequantize in the matmul (W4A16: activations stay in
the engine's dtype). A version arrives as the trainer's fp32 tensors (quantized on load with the
same function the trainer used) or as an int4 payload (`int4_payload`: `<name>.qweight` uint8
[out, in/2] + `<name>.scales` fp32 [out, in/group_size] in place of `<name>`), 8x fewer bytes
than fp32 for the targeted weights plus 4 bytes of scale per group.

Targets: "experts" quantizes the routed experts of MoE layers; "linear" every linear weight of
the decoder layers (attention q/k/v/o, dense and shared-expert MLPs, routed experts), never the
router (`mlp.gate`, `shared_expert_gate`), norms, embeddings or the LM head.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping
from typing import Literal

import msgspec
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrl.models.checkpoint import from_hf_names
from streamrl.models.moe import Experts

QMAX = 7  # the largest positive int4; -8 is reachable only by rounding, never by the scale
QWEIGHT, SCALES = ".qweight", ".scales"
_ROUTERS = ("gate", "shared_expert_gate")  # module names under mlp that are routers
_SERVED: weakref.WeakSet = weakref.WeakSet()  # models `serve_int4` converted
_PER_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class Int4Spec(msgspec.Struct, kw_only=True, frozen=True):
    group_size: int = 128
    """Weights per scale, along the input dim; it must divide every targeted in_features."""
    targets: Literal["experts", "linear"] = "experts"
    """"experts": the routed experts; "linear": every linear weight of the decoder layers."""


# ---- the arithmetic -------------------------------------------------------------------------


def quantize_int4(w: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """(q int8 [..., out, in] in [-8, 7], scales fp32 [..., out, in / group_size]), in fp32."""
    groups = _groups(w.detach().float(), group_size)  # [..., out, in/G, G]
    amax = groups.abs().amax(dim=-1)  # [..., out, in/G]
    scales = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(groups / scales[..., None]).clamp(-8, QMAX).to(torch.int8)
    return q.reshape(w.shape), scales


def dequantize(q: Tensor, scales: Tensor, group_size: int,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """q * s per group, computed in fp32 and then cast to `dtype`: [..., out, in]."""
    w = _groups(q.float(), group_size) * scales.float()[..., None]
    return w.reshape(q.shape).to(dtype)


def fake_quant_int4(w: Tensor, group_size: int) -> Tensor:
    """w_q in value, identity in gradient (the straight-through estimator)."""
    q, scales = quantize_int4(w, group_size)
    w_q = dequantize(q, scales, group_size, w.dtype)
    return w + (w_q - w).detach()


def pack_int4(q: Tensor) -> Tensor:
    """int8 values in [-8, 7], [..., in] with `in` even -> uint8 [..., in / 2]."""
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last dim, got {list(q.shape)}")
    nibbles = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """uint8 [..., n] -> int8 [..., 2n], the inverse of `pack_int4`."""
    low = (packed & 0xF).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    both = torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], -1)
    return (both ^ 8) - 8  # sign-extend the 4-bit two's complement


def dequantize_packed(packed: Tensor, scales: Tensor, group_size: int,
                      dtype: torch.dtype) -> Tensor:
    return dequantize(unpack_int4(packed), scales, group_size, dtype)


def _groups(w: Tensor, group_size: int) -> Tensor:
    if group_size <= 0 or w.shape[-1] % group_size:
        raise ValueError(f"int4 group_size {group_size} must divide the input dim "
                         f"{w.shape[-1]} of a weight {list(w.shape)}")
    return w.reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)


# ---- training: fake quantization with the straight-through estimator ------------------------


class FakeQuantLinear(nn.Linear):
    """nn.Linear computing with its weight's int4 fake quantization (`fake_quantize`)."""

    group_size: int

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, fake_quant_int4(self.weight, self.group_size), self.bias)


class FakeQuantExperts(Experts):
    """Routed experts computing with their weights' int4 fake quantization."""

    group_size: int

    def projections(self) -> tuple[Tensor, Tensor, Tensor]:
        return (fake_quant_int4(self.gate_proj, self.group_size),
                fake_quant_int4(self.up_proj, self.group_size),
                fake_quant_int4(self.down_proj, self.group_size))


def fake_quantize(model: nn.Module, spec: Int4Spec) -> list[str]:
    """Make the targeted modules of `model` compute with int4 fake-quantized weights, in place
    (class swap: parameters, names and state dict unchanged). Returns the modules' names; a
    target that matches nothing or a group size that does not divide a weight is a ValueError
    naming it, before any module changed."""
    targets = _targets(model, spec)
    for _, module in targets:
        kind = FakeQuantExperts if isinstance(module, Experts) else FakeQuantLinear
        module.__class__ = kind
        module.group_size = spec.group_size
    return [name for name, _ in targets]


# ---- serving: packed int4 weights, dequantized in the matmul (W4A16) ------------------------


class Int4Linear(nn.Module):
    """y = x W_q^T + b with W_q held as packed int4 + fp32 group scales."""

    def __init__(self, out_features: int, in_features: int, group_size: int,
                 bias: Tensor | None, device: torch.device) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2,
                                                    dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, in_features // group_size,
                                                  device=device))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    def set_weight(self, name: str, w: Tensor) -> None:
        q, scales = quantize_int4(w, self.group_size)
        self.set_packed(name, pack_int4(q), scales)

    def set_packed(self, name: str, qweight: Tensor, scales: Tensor) -> None:
        _copy_checked(self.qweight, qweight, f"{name}{QWEIGHT}")
        _copy_checked(self.scales, scales, f"{name}{SCALES}")

    def forward(self, x: Tensor) -> Tensor:
        return w4a16_linear(x, self.qweight, self.scales, self.group_size, self.bias)


class Int4Experts(Experts):
    """Routed experts held as packed int4 + fp32 scales, one stack per projection."""

    def __init__(self, experts: Experts, group_size: int) -> None:
        nn.Module.__init__(self)
        self.impl, self.backend, self.group_size = experts.impl, experts.backend, group_size
        for name in _EXPERT_PROJS:
            w = getattr(experts, name)
            self.register_buffer(f"{name}_q", torch.zeros(*w.shape[:-1], w.shape[-1] // 2,
                                                          dtype=torch.uint8, device=w.device))
            self.register_buffer(f"{name}_scales", torch.ones(
                *w.shape[:-1], w.shape[-1] // group_size, device=w.device))
        self.dtype = experts.gate_proj.dtype

    def set_weight(self, name: str, w: Tensor) -> None:
        q, scales = quantize_int4(w, self.group_size)
        self.set_packed(name, pack_int4(q), scales)

    def set_packed(self, name: str, qweight: Tensor, scales: Tensor) -> None:
        proj = name.rpartition(".")[2]
        _copy_checked(getattr(self, f"{proj}_q"), qweight, f"{name}{QWEIGHT}")
        _copy_checked(getattr(self, f"{proj}_scales"), scales, f"{name}{SCALES}")

    def projections(self) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(dequantize_packed(getattr(self, f"{p}_q"), getattr(self, f"{p}_scales"),
                                       self.group_size, self.dtype)
                     for p in _EXPERT_PROJS)  # type: ignore[return-value]


_EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")


def w4a16_linear(x: Tensor, qweight: Tensor, scales: Tensor, group_size: int,
                 bias: Tensor | None = None) -> Tensor:
    """x [..., in] @ dequant(qweight, scales)^T [in, out] (+ bias), in x's dtype. On CUDA with a
    16-bit x the Triton kernel (`int4_kernel.py`) dequantizes inside the matmul tile; elsewhere
    the weight is dequantized once and multiplied by torch."""
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        from streamrl.models.int4_kernel import w4a16_matmul

        y = w4a16_matmul(x.reshape(-1, x.shape[-1]), qweight, scales, group_size)
        y = y.reshape(*x.shape[:-1], -1)
        return y if bias is None else y + bias
    return F.linear(x, dequantize_packed(qweight, scales, group_size, x.dtype), bias)


def serve_int4(model: nn.Module, spec: Int4Spec) -> list[str]:
    """Replace the targeted modules of `model` by `Int4Linear` / `Int4Experts` holding the int4
    quantization of their current weights (which leave the model's parameters). Returns the
    modules' names."""
    targets = _targets(model, spec)
    for name, module in targets:
        parent, _, child = name.rpartition(".")
        if isinstance(module, Experts):
            new: nn.Module = Int4Experts(module, spec.group_size)
            for proj in _EXPERT_PROJS:
                new.set_weight(f"{name}.{proj}", getattr(module, proj))
        else:
            assert isinstance(module, nn.Linear)
            new = Int4Linear(module.out_features, module.in_features, spec.group_size,
                             module.bias, module.weight.device)
            new.set_weight(f"{name}.weight", module.weight)
        setattr(model.get_submodule(parent), child, new)
    _SERVED.add(model)
    return [name for name, _ in targets]


def is_int4(model: nn.Module) -> bool:
    """Whether `serve_int4` converted `model` (its versions then go through `load_int4`)."""
    return model in _SERVED


def load_int4(model: nn.Module, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Write a weight version (HF names) into `model`'s int4 modules, quantizing fp tensors with
    the trainer's function or copying an `int4_payload`'s packed ones; returns the remaining
    tensors (the model's other parameters, under their names) for the usual copy. A targeted
    weight missing from `tensors` or packed tensors of no int4 module raise ValueError naming
    them, before anything is written."""
    config = model.config  # type: ignore[attr-defined]
    packed = {n: t for n, t in tensors.items() if n.endswith((QWEIGHT, SCALES))}
    state = from_hf_names({n: t for n, t in tensors.items() if n not in packed}, config)
    writes: list[tuple[nn.Module, str, tuple[Tensor, ...]]] = []
    for prefix, module in model.named_modules():
        if not isinstance(module, Int4Linear | Int4Experts):
            continue
        for attr in (("weight",) if isinstance(module, Int4Linear) else _EXPERT_PROJS):
            name = f"{prefix}.{attr}"
            if name in state:
                writes.append((module, name, (state.pop(name),)))
            else:
                writes.append((module, name, _packed_of(name, module, packed, config)))
    if packed:
        raise ValueError(f"weights: packed int4 tensors of no int4 module: {sorted(packed)[:8]}")
    for module, name, parts in writes:
        if len(parts) == 1:
            module.set_weight(name, parts[0])  # type: ignore[operator]
        else:
            module.set_packed(name, *parts)  # type: ignore[operator]
    return state


def int4_scheme(spec: Int4Spec) -> str:
    """`WeightVersionAnnounced.quantization` of a version published as an int4 payload."""
    return f"int4/sym-group{spec.group_size}/{spec.targets}"


def int4_payload(tensors: Mapping[str, Tensor], spec: Int4Spec) -> dict[str, Tensor]:
    """A version's HF tensors with the targeted weights as `<name>.qweight` (uint8) and
    `<name>.scales` (fp32), quantized as the trainer fake-quantizes them; the rest unchanged."""
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        if _hf_targeted(name, t, spec):
            q, scales = quantize_int4(t, spec.group_size)
            out[name + QWEIGHT], out[name + SCALES] = pack_int4(q), scales
        else:
            out[name] = t
    return out


def _packed_of(name: str, module: nn.Module, packed: dict[str, Tensor],
               config: object) -> tuple[Tensor, Tensor]:
    """(qweight, scales) of internal weight `name` from an int4 payload, popped from `packed`;
    per-expert HF tensors are stacked."""
    if isinstance(module, Int4Linear):
        keys = [name]
    else:
        prefix, _, proj = name.rpartition(".")
        keys = [f"{prefix}.{e}.{proj}.weight"
                for e in range(config.num_experts)]  # type: ignore[attr-defined]
    missing = [k for k in keys if k + QWEIGHT not in packed or k + SCALES not in packed]
    if missing:
        raise ValueError(f"weights: int4 module weight `{name}` is missing (neither the tensor "
                         f"nor {missing[0]}{QWEIGHT} + {SCALES} given)")
    q = [packed.pop(k + QWEIGHT) for k in keys]
    s = [packed.pop(k + SCALES) for k in keys]
    return (q[0], s[0]) if len(keys) == 1 else (torch.stack(q), torch.stack(s))


def _copy_checked(dst: Tensor, src: Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"weights: `{name}` has shape {list(src.shape)}, the int4 model "
                         f"expects {list(dst.shape)}")
    with torch.no_grad():
        dst.copy_(src)


def _targets(model: nn.Module, spec: Int4Spec) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs `spec` quantizes, checked: something matches and the group
    size divides every input dim."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name.startswith("model.layers."):
            continue
        if isinstance(module, Experts) or (
                spec.targets == "linear" and isinstance(module, nn.Linear)
                and name.rpartition(".")[2] not in _ROUTERS):
            found.append((name, module))
    if not found:
        raise ValueError(f"int4 targets = {spec.targets!r} matches no module of this model "
                         "(a dense model has no experts: use targets = \"linear\")")
    for name, module in found:
        weights = ([getattr(module, p) for p in _EXPERT_PROJS] if isinstance(module, Experts)
                   else [module.weight])
        for w in weights:
            if w.shape[-1] % spec.group_size or w.shape[-1] % 2:
                raise ValueError(f"int4 group_size {spec.group_size} does not divide the input "
                                 f"dim {w.shape[-1]} of `{name}`: pick a divisor of it")
    return found


def _hf_targeted(name: str, t: Tensor, spec: Int4Spec) -> bool:
    if not name.startswith("model.layers.") or not name.endswith(".weight") or t.dim() != 2:
        return False
    if _PER_EXPERT.match(name):
        return True
    module = name[: -len(".weight")].rpartition(".")[2]
    return spec.targets == "linear" and ".mlp.experts." not in name and module not in _ROUTERS \
        and not module.endswith("norm")
