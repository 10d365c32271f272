"""LoRA adapters served by the torch engine without merging (docs/lora.md).

The engine's base weights stay as they are; `Adapters` puts LoRA layers on the model the first
time an adapter arrives and keeps every loaded adapter stacked per layer
(`streamrl.models.lora.set_adapters`). Each KV slot remembers the adapter of the request in it,
and before a forward the engine names, per batch row, which stacked adapter applies: one base
matmul for the whole batch plus each row's own low-rank term, so requests of different
adapters (several runs, or a policy and its reference) share one engine and one base model.

    adapters.load("", tensors)             # the run's own adapter (a LoRA weight version)
    adapters.load("other-run", tensors)    # another adapter, named by requests
    adapters.assign(slot, request.adapter) # at admission
    adapters.select(rows)                  # before each forward over these slots
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from streamrl.models import CausalLM
from streamrl.models.lora import (
    ALL_LINEAR,
    SCALE_KEY,
    LoraSpec,
    adapter_ids,
    add_lora,
    lora_layers,
    set_adapters,
)

RUN_ADAPTER = ""
"""The id of the run's own adapter: what `load_weights` loads and requests get by default."""


class Adapters:
    def __init__(self, model: CausalLM, num_slots: int) -> None:
        self.model = model
        self._ids: dict[str, int] = {}  # adapter id -> stacked index
        self._tensors: list[Mapping[str, Tensor]] = []
        self._slot_adapter = torch.full((num_slots,), -1, dtype=torch.long)  # per KV slot

    @property
    def active(self) -> bool:
        """Whether any adapter is loaded (then forwards go through the LoRA layers)."""
        return bool(self._ids)

    def load(self, adapter_id: str, tensors: Mapping[str, Tensor]) -> None:
        """Load or replace adapter `adapter_id` (A, B and scale of a LoRA weight version).
        Requests running on it continue with the new tensors from the next forward."""
        if SCALE_KEY not in tensors:
            raise ValueError(f"adapter {adapter_id!r} has no {SCALE_KEY!r} tensor: load a LoRA "
                             "weight version (streamrl.models.lora.adapter_version)")
        if not lora_layers(self.model):
            targets = tuple(sorted({k.split(".lora_")[0].rsplit(".", 1)[-1]
                                    for k in tensors if k != SCALE_KEY}))
            add_lora(self.model, LoraSpec(rank=1, target_modules=targets or ALL_LINEAR))
        names = {f"{n}.lora_{ab}.weight" for n in lora_layers(self.model) for ab in "AB"}
        extra = sorted(set(tensors) - names - {SCALE_KEY})
        if extra:
            raise ValueError(f"adapter {adapter_id!r} adapts layers this engine's adapters do "
                             f"not: {extra[:3]} (every adapter of one engine targets the same "
                             "modules)")
        owned = dict(tensors)
        for n, m in lora_layers(self.model).items():  # a layer the adapter leaves alone: zeros
            owned.setdefault(f"{n}.lora_A.weight", torch.zeros(1, m.in_features))
            owned.setdefault(f"{n}.lora_B.weight", torch.zeros(m.out_features, 1))
        if adapter_id not in self._ids:
            self._ids[adapter_id] = len(self._tensors)
            self._tensors.append(owned)
        else:
            self._tensors[self._ids[adapter_id]] = owned
        set_adapters(self.model, self._tensors)

    def check(self, adapter_id: str | None) -> None:
        """Raise ValueError for a request naming an adapter this engine does not hold."""
        if adapter_id is not None and adapter_id not in self._ids:
            raise ValueError(f"unknown adapter {adapter_id!r}; loaded: {sorted(self._ids)} "
                             "(load it with load_adapter first)")

    def assign(self, slot: int, adapter_id: str | None) -> None:
        """The request now in KV slot `slot` uses `adapter_id` (None: the run's own)."""
        key = RUN_ADAPTER if adapter_id is None else adapter_id
        self._slot_adapter[slot] = self._ids.get(key, -1)

    def select(self, rows: Tensor) -> None:
        """Before a forward over KV slots `rows` ([n]): each row's stacked adapter."""
        if self.active:  # one host->device copy per forward, not one per layer
            adapter_ids(self.model, self._slot_adapter[rows.cpu()].to(rows.device))
