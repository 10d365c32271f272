"""Load and save HF-format checkpoints: `config.json` + safetensors (single file or sharded).

Names: every parameter keeps its HF name except routed experts, which we stack per layer
(`model.layers.{i}.mlp.experts.{gate,up,down}_proj`: [E, I, H], [E, I, H], [E, H, I]). On disk
they are written per expert (`mlp.experts.{e}.gate_proj.weight`, ...): that is what hub
checkpoints use and what transformers 5.24 writes for Qwen3-MoE (it fuses `gate_up_proj` only
in memory). Loading also accepts the fused layout (`mlp.experts.gate_up_proj`: [E, 2I, H] with
gate rows first, `mlp.experts.down_proj`: [E, H, I]) in case a checkpoint was written that way.

DeepSeek-V3 and GLM-4.5 checkpoints also hold multi-token-prediction layers, numbered after
the decoder's (`model.layers.{num_hidden_layers + j}.*`, j < `num_nextn_predict_layers`).
Like transformers, we skip them on load and so never write them (the config keeps its count).
Their shared experts (`mlp.shared_experts.*`), router bias (`mlp.gate.e_score_correction_bias`)
and first dense layers keep their HF names as they are.

Save -> load is bit-exact: tensors are copied, never recomputed. Tied embeddings are written
once (no `lm_head.weight`), as transformers does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.overrides import TorchFunctionMode

from streamrl.models.config import ModelConfig
from streamrl.models.model import CausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PROJS = ("gate_proj", "up_proj", "down_proj")
_PER_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_FUSED_GATE_UP = re.compile(r"^(.*\.mlp\.experts)\.gate_up_proj$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def load_checkpoint(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> CausalLM:
    """Build a `CausalLM` from an HF checkpoint directory. Raises `ValueError` naming any missing,
    unexpected or mis-shaped tensor."""
    path = Path(path)
    config = ModelConfig.from_file(path)
    with torch.device("meta"), _SkipMetaInit():  # every tensor comes from the checkpoint
        model = CausalLM(config)
    expected = {name: t.shape for name, t in model.state_dict().items()}
    state = checked_state(read_safetensors(path), config, expected,
                          source=f"checkpoint {path}", reference="config.json implies")
    for name in state:
        state[name] = state[name].to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


class _SkipMetaInit(TorchFunctionMode):
    """Random init of meta tensors is skipped. It would draw nothing anyway, and meta `normal_`
    (nn.Embedding's init) has no native kernel: its Python decomposition imports ~900 modules
    (torch._dynamo, sympy), 2-7 s of every process's start on a 2-core machine."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # nn.init passes it by name
        if func in _INIT_OPS and isinstance(target, Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


_INIT_OPS = {torch.nn.init.normal_, torch.nn.init.trunc_normal_, torch.nn.init.uniform_,
             Tensor.normal_, Tensor.uniform_}


def save_checkpoint(
    model: CausalLM, path: str | Path, *, max_shard_bytes: int | None = None
) -> None:
    """Write `config.json` and the weights under HF names into directory `path`.

    Replaces any previous weights files there (single or sharded) so a stale index can never
    shadow the new weights. With `max_shard_bytes`, weights are split into
    `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # .cpu() is a no-op on CPU tensors and lets a GPU trainer save without a model copy.
    state = {k: v.cpu() for k, v in to_hf_names(model.state_dict(), model.config).items()}
    shards = _split(state, max_shard_bytes)
    for old in [*path.glob("model-*-of-*.safetensors"), path / SINGLE_FILE, path / INDEX_FILE]:
        old.unlink(missing_ok=True)
    if len(shards) == 1:
        _atomic(path / SINGLE_FILE, lambda tmp: save_file(shards[0], tmp, {"format": "pt"}))
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            _atomic(path / name, lambda tmp, s=shard: save_file(s, tmp, {"format": "pt"}))
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        _atomic(path / INDEX_FILE, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
    dtype = next(iter(state.values())).dtype
    config = {**model.config.to_hf_dict(), "dtype": str(dtype).removeprefix("torch.")}
    _atomic(path / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))


def checked_state(tensors: dict[str, Tensor], config: ModelConfig,
                  expected: dict[str, torch.Size], *, source: str,
                  reference: str = "the model expects") -> dict[str, Tensor]:
    """`tensors` (HF names, per-expert or fused MoE layout) under our parameter names, checked
    against `expected` shapes: every name present, none extra, every shape equal, else
    `ValueError` naming them. A tied LM head is the embedding, so a stored one is ignored (as
    transformers does)."""
    state = from_hf_names(tensors, config)
    expected = dict(expected)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        expected.pop("lm_head.weight", None)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the model: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise ValueError(f"{source}: `{name}` has shape {list(state[name].shape)}, "
                             f"{reference} {list(shape)}")
    return state


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory under their stored names (single or sharded)."""
    index = path / INDEX_FILE
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (path / SINGLE_FILE).exists():
        files = [SINGLE_FILE]
    else:
        raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")
    tensors: dict[str, Tensor] = {}
    for file in files:
        with safe_open(path / file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[name] = f.get_tensor(name)
    return tensors


def from_hf_names(tensors: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """HF tensor names -> our state dict (stacks per-expert weights, splits fused gate_up,
    drops multi-token-prediction layers)."""
    state: dict[str, Tensor] = {}
    per_expert: dict[tuple[str, str], dict[int, Tensor]] = {}
    mtp = range(config.num_hidden_layers,
                config.num_hidden_layers + config.num_nextn_predict_layers)
    for name, t in tensors.items():
        if mtp and (m := _LAYER.match(name)) and int(m[1]) in mtp:
            continue
        if m := _PER_EXPERT.match(name):
            per_expert.setdefault((m[1], m[3]), {})[int(m[2])] = t
        elif m := _FUSED_GATE_UP.match(name):
            gate, up = t.chunk(2, dim=1)  # [E, 2I, H] -> 2 x [E, I, H]
            state[f"{m[1]}.gate_proj"], state[f"{m[1]}.up_proj"] = gate, up
        else:
            state[name] = t
    for (prefix, proj), experts in per_expert.items():
        if sorted(experts) != list(range(config.num_experts)):
            raise ValueError(
                f"checkpoint has experts {sorted(experts)} for `{prefix}.*.{proj}`, "
                f"config.json says num_experts={config.num_experts}"
            )
        state[f"{prefix}.{proj}"] = torch.stack([experts[e] for e in range(config.num_experts)])
    return state


def to_hf_names(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Our state dict -> HF names, per-expert layout; copies so no two tensors share memory."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        prefix, _, proj = name.rpartition(".")
        if prefix.endswith(".mlp.experts") and proj in _PROJS:
            for e in range(t.shape[0]):
                out[f"{prefix}.{e}.{proj}.weight"] = t[e].detach().clone()
        else:
            out[name] = t.detach().clone().contiguous()
    return out


def _split(state: dict[str, Tensor], max_shard_bytes: int | None) -> list[dict[str, Tensor]]:
    if max_shard_bytes is None:
        return [state]
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def _atomic(target: Path, write) -> None:
    # Write beside the target and rename, so a crash never leaves a half-written file in place.
    tmp = target.with_name(target.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, target)
