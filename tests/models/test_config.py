"""Reading `config.json`: every spelling transformers uses, and errors that name the field."""

from __future__ import annotations

import copy
import json

import msgspec
import pytest

from streamrl.models import ModelConfig

# Shaped like Qwen/Qwen3-30B-A3B's config.json on the hub (pre-transformers-5 spelling).
HUB_MOE = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "hidden_act": "silu",
    "use_sliding_window": False,
    "sliding_window": None,
    "torch_dtype": "bfloat16",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}


def transformers5_spelling(raw: dict) -> dict:
    """The same config as transformers 5.24 writes it."""
    out = {k: v for k, v in raw.items() if k not in ("rope_theta", "rope_scaling", "num_experts")}
    out["rope_parameters"] = {"rope_type": "default", "rope_theta": raw["rope_theta"]}
    out["num_local_experts"] = raw["num_experts"]
    return out


def test_both_spellings_give_the_same_config() -> None:
    old = ModelConfig.from_hf_dict(HUB_MOE)
    new = ModelConfig.from_hf_dict(transformers5_spelling(HUB_MOE))
    assert old == new
    assert old.rope_theta == 1e6 and old.num_experts == 128 and old.num_moe_layers == 48


def test_to_hf_dict_round_trips_and_is_json() -> None:
    config = ModelConfig.from_hf_dict(HUB_MOE)
    assert ModelConfig.from_hf_dict(json.loads(json.dumps(config.to_hf_dict()))) == config


def test_moe_layer_selection() -> None:
    config = ModelConfig.from_hf_dict(
        {**HUB_MOE, "num_hidden_layers": 8, "decoder_sparse_step": 2, "mlp_only_layers": [3]}
    )
    assert config.moe_layers == (1, 5, 7)


def test_head_dim_defaults_to_hidden_over_heads() -> None:
    raw = {k: v for k, v in HUB_MOE.items() if k != "head_dim"}
    assert ModelConfig.from_hf_dict(raw).head_dim == 2048 // 32


def test_config_is_frozen() -> None:
    config = ModelConfig.from_hf_dict(HUB_MOE)
    with pytest.raises(AttributeError):
        config.hidden_size = 1  # type: ignore[misc]


def drop(key: str):
    return lambda raw: {k: v for k, v in raw.items() if k != key}


def put(**fields):
    return lambda raw: {**raw, **fields}


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (drop("vocab_size"), "vocab_size"),
        (put(hidden_size="2048"), "hidden_size"),
        (put(norm_topk_prob="yes"), "norm_topk_prob"),
        (put(num_key_value_heads=5), "num_key_value_heads"),
        (put(head_dim=127), "head_dim"),
        (put(num_hidden_layers=0), "num_hidden_layers"),
        (put(model_type="llama"), "model_type"),
        (put(hidden_act="gelu"), "hidden_act"),
        (put(use_sliding_window=True), "use_sliding_window"),
        (put(rope_scaling={"type": "yarn", "factor": 4.0}), "rope_scaling.rope_type"),
        (put(rope_parameters={"rope_type": "linear", "factor": 2.0}), "rope_parameters.rope_type"),
        (put(rope_theta="big"), "rope_theta"),
        (put(num_experts=0), "num_experts"),
        (put(num_experts_per_tok=129), "num_experts_per_tok"),
        (put(moe_intermediate_size=0), "moe_intermediate_size"),
        (put(decoder_sparse_step=0), "decoder_sparse_step"),
        (put(mlp_only_layers=[48]), "mlp_only_layers"),
        (put(shared_expert_intermediate_size=-1), "shared_expert_intermediate_size"),
    ],
)
def test_invalid_config_error_names_the_field(edit, field: str) -> None:
    with pytest.raises(ValueError, match=f"`?\\$?\\.?{field}") as info:
        ModelConfig.from_hf_dict(edit(copy.deepcopy(HUB_MOE)))
    assert field in str(info.value)


def test_config_struct_forbids_unknown_fields() -> None:
    """Decoded directly (e.g. from a recipe), a typo is an error rather than silently ignored."""
    fields = msgspec.to_builtins(ModelConfig.from_hf_dict(HUB_MOE))
    assert msgspec.convert(fields, ModelConfig) == ModelConfig.from_hf_dict(HUB_MOE)
    with pytest.raises(msgspec.ValidationError, match="hiden_size"):
        msgspec.convert({**fields, "hiden_size": 1}, ModelConfig)
