"""HF ↔ megatron-core weight conversion on CPU, without megatron installed: exact round trips
for every family megatron can express, the fused QKV layout (and bias) megatron splits, and
clear errors for weights that do not fit and models megatron cannot express."""

from __future__ import annotations

import msgspec
import pytest
import torch

from streamrl.consumers.trainer.megatron import (
    hf_names,
    hf_to_megatron,
    megatron_shapes,
    megatron_to_hf,
)
from streamrl.consumers.trainer.megatron.convert import megatron_unsupported
from streamrl.consumers.trainer.megatron.model import build_gpt
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
    with pytest.raises(ValueError, match=r"unexpected \[.model.layers.0.mlp.down_proj"):
        hf_to_megatron(hf, MOE)  # dense weights for a MoE config


# Qwen3-MoE with a dense layer in the middle (mlp_only_layers), and the Qwen2-MoE variant with
# a gated shared expert and unnormalized top-k.
MOE = ModelConfig(model_type="qwen3_moe", vocab_size=97, hidden_size=48, intermediate_size=80,
                  num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                  num_experts=5, num_experts_per_tok=2, moe_intermediate_size=16,
                  norm_topk_prob=True, mlp_only_layers=(1,))
SHARED = msgspec.structs.replace(MOE, norm_topk_prob=False, mlp_only_layers=(),
                                 shared_expert_intermediate_size=24)


@pytest.mark.parametrize("config", [MOE, SHARED], ids=["qwen3_moe", "shared_expert"])
def test_moe_round_trip_is_exact_both_ways(config: ModelConfig) -> None:
    hf = hf_state(config)  # per-expert HF names, as hub checkpoints store them
    assert sorted(hf) == sorted(hf_names(config))
    mg = hf_to_megatron(hf, config)
    assert {n: tuple(t.shape) for n, t in mg.items()} == megatron_shapes(config)
    back = megatron_to_hf(mg, config)
    assert sorted(back) == sorted(hf)
    for name, t in hf.items():
        assert torch.equal(back[name], t), name
    again = hf_to_megatron(back, config)
    assert all(torch.equal(again[n], mg[n]) for n in mg)
    dense = [i for i in range(config.num_hidden_layers) if i not in config.moe_layers]
    for i in dense:
        assert f"decoder.layers.{i}.mlp.linear_fc1.weight" in mg
        assert f"decoder.layers.{i}.mlp.router.weight" not in mg


def test_moe_experts_compute_what_hf_experts_compute() -> None:
    """Each megatron expert MLP (linear_fc1 = [gate; up] -> SwiGLU -> linear_fc2) computes the HF
    expert of the same index, the router is the HF gate, and the shared expert and its gate map
    onto megatron's shared_experts."""
    hf = hf_state(SHARED)
    mg = hf_to_megatron(hf, SHARED)
    x = torch.randn(7, SHARED.hidden_size)
    src, dst = "model.layers.2.mlp.", "decoder.layers.2.mlp."

    def swiglu(fc1: torch.Tensor, fc2: torch.Tensor) -> torch.Tensor:
        gate, up = (x @ fc1.T).chunk(2, dim=-1)
        return (torch.nn.functional.silu(gate) * up) @ fc2.T

    def hf_mlp(prefix: str) -> torch.Tensor:
        return (torch.nn.functional.silu(x @ hf[prefix + "gate_proj.weight"].T)
                * (x @ hf[prefix + "up_proj.weight"].T)) @ hf[prefix + "down_proj.weight"].T

    for e in range(SHARED.num_experts):
        ours = swiglu(mg[dst + f"experts.local_experts.{e}.linear_fc1.weight"],
                      mg[dst + f"experts.local_experts.{e}.linear_fc2.weight"])
        torch.testing.assert_close(ours, hf_mlp(src + f"experts.{e}."))
    torch.testing.assert_close(swiglu(mg[dst + "shared_experts.linear_fc1.weight"],
                                      mg[dst + "shared_experts.linear_fc2.weight"]),
                               hf_mlp(src + "shared_expert."))
    assert torch.equal(mg[dst + "router.weight"], hf[src + "gate.weight"])
    assert torch.equal(mg[dst + "shared_experts.gate_weight"],
                       hf[src + "shared_expert_gate.weight"])


def test_moe_weights_that_do_not_fit_are_named() -> None:
    hf = hf_state(MOE)
    fewer = ModelConfig(**{**msgspec.structs.asdict(MOE), "num_experts": 4})
    with pytest.raises(ValueError, match=r"unexpected \['model.layers.0.mlp.experts.4"):
        hf_to_megatron(hf, fewer)
    bad = dict(hf, **{"model.layers.2.mlp.gate.weight": torch.ones(4, MOE.hidden_size)})
    with pytest.raises(ValueError, match=r"decoder\.layers\.2\.mlp\.router\.weight: \(4, 48\)"):
        hf_to_megatron(bad, MOE)
    mg = hf_to_megatron(hf, MOE)
    del mg["decoder.layers.0.mlp.experts.local_experts.3.linear_fc2.weight"]
    with pytest.raises(ValueError, match=r"local_experts\.3\.linear_fc2"):
        megatron_to_hf(mg, MOE)


# The other dense families: Qwen2's q/k/v bias, Llama 3.1 (no q/k norm, megatron's built-in
# llama3 rope scaling) and Mistral without a window; GQA groups of 3.
LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}
FAMILIES = {
    "qwen2": msgspec.structs.replace(CONFIG, model_type="qwen2"),
    "llama": msgspec.convert({**msgspec.structs.asdict(CONFIG), "model_type": "llama",
                              "tie_word_embeddings": False, "rope_scaling": LLAMA31},
                             ModelConfig),
    "mistral": msgspec.structs.replace(CONFIG, model_type="mistral"),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_round_trip_is_exact_both_ways(name: str) -> None:
    config = FAMILIES[name]
    hf = hf_state(config)
    assert sorted(hf) == sorted(hf_names(config))
    assert any(n.endswith("q_norm.weight") for n in hf) == config.qk_norm
    assert any(n.endswith("q_proj.bias") for n in hf) == config.qkv_bias
    mg = hf_to_megatron(hf, config)
    assert {n: tuple(t.shape) for n, t in mg.items()} == megatron_shapes(config)
    back = megatron_to_hf(mg, config)
    assert sorted(back) == sorted(hf)
    assert all(torch.equal(back[n], t) for n, t in hf.items())
    assert megatron_unsupported(config) is None


def test_fused_qkv_bias_splits_the_way_megatron_splits_it() -> None:
    config = FAMILIES["qwen2"]
    hf = hf_state(config)
    mg = hf_to_megatron(hf, config)
    G, D, Q = config.num_key_value_heads, config.head_dim, config.num_attention_heads
    x = torch.randn(5, config.hidden_size)
    p, m = "model.layers.0.self_attn.", "decoder.layers.0.self_attention.linear_qkv."
    mixed = torch.nn.functional.linear(x, mg[m + "weight"], mg[m + "bias"]).view(5, G, -1)
    q, k, v = mixed.split([Q // G * D, D, D], dim=-1)
    for got, proj in ((q, "q"), (k, "k"), (v, "v")):
        want = torch.nn.functional.linear(x, hf[p + f"{proj}_proj.weight"],
                                          hf[p + f"{proj}_proj.bias"])
        torch.testing.assert_close(got.reshape(5, -1), want)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (dict(model_type="llama", attention_bias=True), "attention_bias"),
        (dict(model_type="llama", mlp_bias=True), "mlp_bias"),
        (dict(model_type="llama", rope_scaling={**LLAMA31, "high_freq_factor": 2.0}),
         "1/4/8192"),
        (dict(model_type="mistral", sliding_window=16), "sliding window"),
    ],
)
def test_what_megatron_cannot_express_is_named(fields: dict, reason: str) -> None:
    config = msgspec.convert({**msgspec.structs.asdict(CONFIG), **fields}, ModelConfig)
    assert reason in (megatron_unsupported(config) or "")
    with pytest.raises(ValueError, match="cannot express"):
        build_gpt(config)  # refused before megatron-core is imported
