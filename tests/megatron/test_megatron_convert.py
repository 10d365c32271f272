"""HF ↔ megatron-core weight conversion on CPU, without megatron installed: exact round trips,
the fused QKV layout megatron splits, and clear errors for weights that do not fit."""

from __future__ import annotations

import msgspec
import pytest
import torch

from consumers.trainer.megatron import hf_names, hf_to_megatron, megatron_shapes, megatron_to_hf
from streamrl.models import CausalLM, ModelConfig
from streamrl.models.checkpoint import to_hf_names

CONFIG = ModelConfig(model_type="qwen3", vocab_size=97, hidden_size=48, intermediate_size=80,
                     num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                     head_dim=8, tie_word_embeddings=True)


def hf_state(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = CausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # norms too: every tensor distinct, so a swapped name shows
    return to_hf_names(model.state_dict(), config)


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_is_exact_both_ways(tied: bool) -> None:
    config = msgspec.structs.replace(CONFIG, tie_word_embeddings=tied)
    hf = hf_state(config)
    assert sorted(hf) == sorted(hf_names(config))
    mg = hf_to_megatron(hf, config)
    assert {n: tuple(t.shape) for n, t in mg.items()} == megatron_shapes(config)
    assert ("output_layer.weight" in mg) == (not tied)
    back = megatron_to_hf(mg, config)
    assert sorted(back) == sorted(hf)
    for name, t in hf.items():
        assert torch.equal(back[name], t), name
    again = hf_to_megatron(back, config)
    assert all(torch.equal(again[n], mg[n]) for n in mg)


def test_fused_qkv_splits_the_way_megatron_splits_it() -> None:
    """Project with the fused weight, then view/split per KV group as megatron's attention
    does: the query, key and value heads equal HF's separate projections."""
    hf = hf_state(CONFIG)
    mg = hf_to_megatron(hf, CONFIG)
    G, D, Q = CONFIG.num_key_value_heads, CONFIG.head_dim, CONFIG.num_attention_heads
    x = torch.randn(5, CONFIG.hidden_size)
    mixed = (x @ mg["decoder.layers.1.self_attention.linear_qkv.weight"].T).view(5, G, -1)
    q, k, v = mixed.split([Q // G * D, D, D], dim=-1)
    p = "model.layers.1.self_attn."
    torch.testing.assert_close(q.reshape(5, Q * D), x @ hf[p + "q_proj.weight"].T)
    torch.testing.assert_close(k.reshape(5, G * D), x @ hf[p + "k_proj.weight"].T)
    torch.testing.assert_close(v.reshape(5, G * D), x @ hf[p + "v_proj.weight"].T)
    gate, up = mg["decoder.layers.1.mlp.linear_fc1.weight"].chunk(2, dim=0)
    assert torch.equal(gate, hf["model.layers.1.mlp.gate_proj.weight"])
    assert torch.equal(up, hf["model.layers.1.mlp.up_proj.weight"])


def test_weights_that_do_not_fit_the_config_are_named() -> None:
    hf = hf_state(CONFIG)
    missing = {k: v for k, v in hf.items() if k != "model.layers.0.self_attn.k_norm.weight"}
    with pytest.raises(ValueError, match=r"missing \['model.layers.0.self_attn.k_norm.weight'\]"):
        hf_to_megatron(missing, CONFIG)
    bad = dict(hf, **{"model.norm.weight": torch.ones(3)})
    with pytest.raises(ValueError, match=r"decoder\.final_layernorm\.weight"):
        hf_to_megatron(bad, CONFIG)
    mg = hf_to_megatron(hf, CONFIG)
    with pytest.raises(ValueError, match="unexpected"):
        megatron_to_hf(dict(mg, extra=torch.ones(1)), CONFIG)
    moe = ModelConfig(model_type="qwen3_moe", vocab_size=97, hidden_size=48,
                      intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=16)
    with pytest.raises(ValueError, match="dense Qwen3 only"):
        hf_to_megatron(hf, moe)
