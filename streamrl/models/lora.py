"""LoRA: low-rank adapters on a model's linear layers, trained while the base stays frozen, and
served unmerged, several at once (docs/lora.md).

    spec = LoraSpec(rank=8, alpha=16)
    add_lora(model, spec)                   # every targeted nn.Linear becomes a LoRALinear
    adapter = lora_state_dict(model)        # {"model.layers.0.self_attn.q_proj.lora_A.weight": ..}
    load_lora(model, adapter)               # the same names back in

A `LoRALinear` keeps the base parameters under their own names (`q_proj.weight`, `.bias`), so
the base checkpoint, its digest and weight sync are unchanged; its forward is

    y = x W^T + b + (dropout(x) A^T B^T) * alpha / rank          A: [rank, in], B: [out, rank]

with B zero-initialised (a fresh adapter changes nothing) and A drawn from a generator seeded
by `spec.seed` and the layer's name, so the same spec gives the same adapter in every process.

Serving several adapters in one batch: `set_adapters(model, {slot: tensors})` stacks adapters
per layer ([num_slots, rank, in], [num_slots, out, rank], scale per slot) and
`adapter_ids(model, ids)` names, per batch row, which slot applies (-1: the base alone). Each
row gets x W^T from the one shared base matmul plus its own low-rank term, so a row's output is
the same whatever other adapters share its batch.

Adapter tensor names follow PEFT's without its `base_model.model.` prefix (`peft.py` adds it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import msgspec
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrl.models.config import ModelConfig
from streamrl.models.model import CausalLM

ALL_LINEAR = "all-linear"
SCALE_KEY = "lora.scale"
"""A weight version of a LoRA run carries its scale alpha/rank as this 0-d fp32 tensor, so an
engine serves adapters of runs with different alphas from their tensors alone."""


class LoraSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What an adapter is: its rank, scale, dropout, targets and the seed of its A matrices."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = ALL_LINEAR
    """"all-linear" (every nn.Linear of the decoder layers, not the LM head) or module names
    ("q_proj", "v_proj", ...) matched against the last part of each linear layer's name."""
    seed: int = 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """An nn.Linear (same `weight`/`bias` names) plus a trainable low-rank update, and optional
    stacked serving adapters selected per batch row."""

    def __init__(self, base: nn.Linear, spec: LoraSpec, name: str) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: shared, frozen
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.scale, self.dropout_p = spec.scale, spec.dropout
        dev = base.weight.device
        A, B = fresh_adapter(name, self.in_features, self.out_features, spec)
        self.lora_A, self.lora_B = nn.Parameter(A.to(dev)), nn.Parameter(B.to(dev))
        # serving: [S, r, in], [S, out, r], [S] and the per-row slot ids [B] (None = training)
        self.slots_A: Tensor | None = None
        self.slots_B: Tensor | None = None
        self.slots_scale: Tensor | None = None
        self.row_slots: Tensor | None = None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # The module's state is its base layer's (checkpoints, digests and engines see the base
        # model unchanged); the adapter travels alone, through `lora_state_dict`.
        for name in ("weight", "bias"):
            param = getattr(self, name)
            if param is not None:
                destination[prefix + name] = param if keep_vars else param.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        for ab in ("lora_A", "lora_B"):  # not part of the base state (see above)
            if prefix + ab in missing_keys:
                missing_keys.remove(prefix + ab)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, T, in] (or [N, in]) -> [..., out]
        y = F.linear(x, self.weight, self.bias)
        if self.row_slots is not None:
            return y + self._served(x)
        # Dropout only where gradients flow: the no-grad passes (proximal logprobs, serving)
        # see the adapter as it is.
        drop = self.dropout_p and torch.is_grad_enabled()
        h = F.dropout(x, self.dropout_p) if drop else x
        A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        return y + F.linear(F.linear(h, A), B) * self.scale

    def _served(self, x: Tensor) -> Tensor:
        """The low-rank term of each row's own adapter slot (0 for rows at slot -1)."""
        assert self.slots_A is not None and self.slots_B is not None
        assert self.slots_scale is not None and self.row_slots is not None
        ids = self.row_slots  # [B]
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"adapter ids name {ids.shape[0]} rows, the batch has {x.shape[0]}")
        use = ids.clamp(min=0)
        A = self.slots_A[use].to(x.dtype)  # [B, r, in]
        B = self.slots_B[use].to(x.dtype)  # [B, out, r]
        scale = torch.where(ids >= 0, self.slots_scale[use], 0.0).to(x.dtype)  # [B]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, T, in]
        low = torch.bmm(torch.bmm(flat, A.transpose(1, 2)), B.transpose(1, 2))  # [B, T, out]
        return (low * scale[:, None, None]).reshape(*x.shape[:-1], self.out_features)


def fresh_adapter(name: str, in_features: int, out_features: int,
                  spec: LoraSpec) -> tuple[Tensor, Tensor]:
    """A new adapter's (A [rank, in], B [out, rank]) for the layer `name`: A kaiming-uniform
    like nn.Linear's own init (bound 1/sqrt(in)) from a generator seeded by spec.seed and the
    name, B zeros. Any process computes the same tensors without the model's weights."""
    A = torch.empty(spec.rank, in_features)
    bound = 1 / math.sqrt(in_features)
    A.uniform_(-bound, bound, generator=torch.Generator().manual_seed(_seed(spec.seed, name)))
    return A, torch.zeros(out_features, spec.rank)


def initial_adapter(config: ModelConfig, spec: LoraSpec) -> dict[str, Tensor]:
    """A fresh adapter for a model of `config`, built on the meta device (no weights read):
    what `add_lora` puts into a model, as a weight version's tensors."""
    with torch.device("meta"):
        model = CausalLM(config)
    out: dict[str, Tensor] = {}
    for name in target_names(model, spec.target_modules):
        m = model.get_submodule(name)
        assert isinstance(m, nn.Linear)
        A, B = fresh_adapter(name, m.in_features, m.out_features, spec)
        out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = A, B
    return {**out, SCALE_KEY: torch.tensor(spec.scale, dtype=torch.float32)}


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def target_names(model: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Names of the linear layers `target_modules` selects inside the decoder layers."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or ".layers." not in f".{name}":
            continue
        if target_modules == ALL_LINEAR or name.rsplit(".", 1)[-1] in target_modules:
            names.append(name)
    if not names:
        raise ValueError(f"lora.target_modules {target_modules!r} matches no linear layer of "
                         "the decoder (names are e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, "
                         "up_proj, down_proj)")
    return names


def add_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Wrap every targeted linear layer in a LoRALinear and freeze everything else; returns
    `model` (changed in place). Only the adapters' A and B require grad afterwards."""
    if spec.rank < 1 or spec.alpha <= 0 or not 0 <= spec.dropout < 1:
        raise ValueError(f"lora needs rank >= 1, alpha > 0 and 0 <= dropout < 1; got rank="
                         f"{spec.rank}, alpha={spec.alpha}, dropout={spec.dropout}")
    names = target_names(model, spec.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), spec, name))
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter alone, under PEFT's names less its prefix (detached, on the model's device)."""
    out: dict[str, Tensor] = {}
    for name, m in lora_layers(model).items():
        out[f"{name}.lora_A.weight"] = m.lora_A.detach()
        out[f"{name}.lora_B.weight"] = m.lora_B.detach()
    return out


def adapter_version(model: nn.Module, spec: LoraSpec) -> dict[str, Tensor]:
    """A LoRA run's weight version: the adapter's A and B plus its scale (`SCALE_KEY`)."""
    return {**lora_state_dict(model), SCALE_KEY: torch.tensor(spec.scale, dtype=torch.float32)}


def is_adapter(tensors: Mapping[str, Tensor]) -> bool:
    """Whether a weight version's tensors are a LoRA adapter rather than full weights."""
    return SCALE_KEY in tensors and all(
        ".lora_A." in k or ".lora_B." in k or k == SCALE_KEY for k in tensors)


def load_lora(model: nn.Module, adapter: Mapping[str, Tensor]) -> None:
    """Copy an adapter's A and B into the model's LoRALinear layers (names and shapes checked:
    a missing, extra or misshapen tensor raises ValueError naming it)."""
    layers = lora_layers(model)
    expected = {f"{n}.lora_{ab}.weight" for n in layers for ab in "AB"}
    adapter = {k: v for k, v in adapter.items() if k != SCALE_KEY}
    if set(adapter) != expected:
        missing, extra = sorted(expected - set(adapter)), sorted(set(adapter) - expected)
        raise ValueError(f"adapter does not fit this model's LoRA layers: missing "
                         f"{missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, m in layers.items():
            for ab, param in (("A", m.lora_A), ("B", m.lora_B)):
                t = adapter[f"{name}.lora_{ab}.weight"]
                if t.shape != param.shape:
                    raise ValueError(f"{name}.lora_{ab}.weight: shape {list(t.shape)}, this "
                                     f"model's rank needs {list(param.shape)}")
                param.copy_(t)


def set_adapters(model: nn.Module, adapters: Sequence[Mapping[str, Tensor] | None]) -> None:
    """Stack serving adapters (weight versions of LoRA runs, `adapter_version`): slot i holds
    `adapters[i]` (None: an empty slot). Ranks may differ between slots (smaller ones are
    zero-padded, which adds exact zeros)."""
    layers = lora_layers(model)
    present = [a for a in adapters if a is not None]
    rank = max((a[f"{n}.lora_A.weight"].shape[0] for a in present for n in layers), default=1)
    for name, m in layers.items():
        dev, dt = m.weight.device, m.weight.dtype
        A = torch.zeros(len(adapters), rank, m.in_features, device=dev, dtype=dt)
        B = torch.zeros(len(adapters), m.out_features, rank, device=dev, dtype=dt)
        for i, a in enumerate(adapters):
            if a is None:
                continue
            a_t, b_t = a[f"{name}.lora_A.weight"], a[f"{name}.lora_B.weight"]
            A[i, : a_t.shape[0]] = a_t.to(device=dev, dtype=dt)
            B[i, :, : b_t.shape[1]] = b_t.to(device=dev, dtype=dt)
        m.slots_A, m.slots_B = A, B
        m.slots_scale = torch.tensor([0.0 if a is None else float(a[SCALE_KEY]) for a in adapters],
                                     dtype=torch.float32, device=dev)


def adapter_ids(model: nn.Module, ids: Tensor | None) -> None:
    """Which adapter slot each batch row uses from now on ([B] long, -1 = base alone); None
    returns the layers to their trainable adapter."""
    for m in lora_layers(model).values():
        m.row_slots = None if ids is None else ids.to(m.weight.device)
