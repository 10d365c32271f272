"""The torch backend's activation term against what autograd really keeps: the bytes of every
tensor saved for backward in a forward of the repository's model under bf16 autocast (weights and
their bf16 copies excluded: the plan counts those as weights), for two dense shapes."""

from __future__ import annotations

import pytest
import torch

from streamrl.models import CausalLM, ModelConfig
from streamrl.plan import count_params, read_shape
from streamrl.plan.memory import torch_activation_bytes

SHAPES = [
    {"hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 8,
     "num_key_value_heads": 4, "head_dim": 32},
    {"hidden_size": 128, "intermediate_size": 640, "num_attention_heads": 4,
     "num_key_value_heads": 2, "head_dim": 64},
]


def saved_bytes(raw: dict, rows: int, seq: int) -> int:
    torch.manual_seed(0)
    model = CausalLM(ModelConfig.from_hf_dict(raw))
    weight_shapes = {tuple(p.shape) for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) not in weight_shapes:  # weights and their autocast copies
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    tokens = torch.randint(0, raw["vocab_size"], (rows, seq))
    positions = torch.arange(seq).expand(rows, seq)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        model.model(tokens, positions)
    return sum(storages.values())


@pytest.mark.parametrize("dims", SHAPES, ids=["h256", "h128"])
def test_torch_activations_match_saved_tensors(dims: dict) -> None:
    raw = {"model_type": "qwen3", "vocab_size": 512, "num_hidden_layers": 3, **dims}
    rows, seq = 3, 100  # 300 tokens: no activation has a weight's shape
    shape = read_shape(raw)
    planned = sum(torch_activation_bytes(shape, x) for x in count_params(shape).layers)
    assert planned * rows * seq == pytest.approx(saved_bytes(raw, rows, seq), rel=0.05)
