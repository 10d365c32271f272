"""LoRA adapters on disk in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`,
tensors named `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, so `peft` loads them
onto the transformers model (`PeftModel.from_pretrained(model, dir)`) and a PEFT adapter can
start a run (`[trainer.lora] init`). Only plain LoRA is read: no DoRA, rsLoRA, bias or
modules_to_save, refused with the field that says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from streamrl.models.config import ModelConfig
from streamrl.models.lora import SCALE_KEY, LoraSpec, initial_adapter

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def save_peft(adapter: Mapping[str, Tensor], spec: LoraSpec, path: str | Path, *,
              base_model: str | None = None) -> Path:
    """Write `adapter` (our names, from `lora_state_dict`) as a PEFT adapter directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    adapter = {k: v for k, v in adapter.items() if k != SCALE_KEY}
    modules = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank,
        "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "target_modules": modules,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "inference_mode": True, "base_model_name_or_path": base_model,
    }
    tensors = {PEFT_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in adapter.items()}
    save_file(tensors, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_peft(path: str | Path) -> tuple[dict[str, Tensor], LoraSpec]:
    """An adapter directory's tensors (our names, fp32) and its rank/alpha/dropout/targets."""
    path = Path(path)
    config_file, weights_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    for f in (config_file, weights_file):
        if not f.is_file():
            raise ValueError(f"{path} is not a PEFT adapter directory: no {f.name}")
    config = json.loads(config_file.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{config_file}: peft_type {config.get('peft_type')!r}, only LORA")
    for field, plain in (("use_dora", False), ("use_rslora", False), ("bias", "none"),
                         ("modules_to_save", None), ("fan_in_fan_out", False)):
        if config.get(field, plain) not in (plain, [] if plain is None else plain):
            raise ValueError(f"{config_file}: {field} = {config[field]!r} is not supported "
                             f"(plain LoRA needs {plain!r})")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{config_file}: per-module rank_pattern/alpha_pattern are not supported")
    tensors = {}
    for k, v in load_file(str(weights_file)).items():
        name = k.removeprefix(PEFT_PREFIX)
        if not (name.endswith(".lora_A.weight") or name.endswith(".lora_B.weight")):
            raise ValueError(f"{weights_file}: tensor {k!r} is not a LoRA A/B matrix")
        tensors[name.replace(".lora_A.default.", ".lora_A.")
                .replace(".lora_B.default.", ".lora_B.")] = v.float()
    targets = config.get("target_modules") or "all-linear"
    spec = LoraSpec(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                    dropout=float(config.get("lora_dropout", 0.0)),
                    target_modules=targets if isinstance(targets, str) else tuple(targets))
    return {**tensors, SCALE_KEY: torch.tensor(spec.scale, dtype=torch.float32)}, spec


def starting_adapter(config: ModelConfig, spec: LoraSpec,
                     init: str | Path | None = None) -> dict[str, Tensor]:
    """A LoRA run's version 0: the PEFT adapter at `init` (its rank, alpha and targets must
    equal `spec`'s), else a fresh seeded adapter (`initial_adapter`, B = 0: the base model)."""
    if init is None:
        return initial_adapter(config, spec)
    tensors, theirs = load_peft(init)
    mine = (spec.rank, spec.alpha, _targets(spec.target_modules))
    if (theirs.rank, theirs.alpha, _targets(theirs.target_modules)) != mine:
        raise ValueError(f"trainer.lora.init {str(init)!r} has rank={theirs.rank}, "
                         f"alpha={theirs.alpha}, target_modules={theirs.target_modules!r}; "
                         f"set [trainer.lora] to the same (rank={spec.rank}, alpha={spec.alpha}, "
                         f"target_modules={spec.target_modules!r} now)")
    expected = initial_adapter(config, spec)
    if {k: v.shape for k, v in tensors.items()} != {k: v.shape for k, v in expected.items()}:
        raise ValueError(f"trainer.lora.init {str(init)!r} does not fit this model: its layers "
                         "or shapes differ from the targeted ones")
    return tensors


def run_adapter(checkpoint: str | Path, config: ModelConfig, spec: LoraSpec,
                init: str | Path | None = None) -> dict[str, Tensor]:
    """The adapter a LoRA run starts from at `checkpoint` (its initial checkpoint): the
    adapter saved there (a fork's starting state), else `starting_adapter`. The driver
    announces it as the run's first version and producers put it on their base model."""
    if (Path(checkpoint) / ADAPTER_WEIGHTS).is_file():
        return load_peft(checkpoint)[0]
    return starting_adapter(config, spec, init)


def _targets(targets: str | tuple[str, ...]) -> str | tuple[str, ...]:
    if isinstance(targets, str):
        return targets
    if set(targets) >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"}:
        return "all-linear"  # what "all-linear" selects in a dense decoder
    return tuple(sorted(targets))
