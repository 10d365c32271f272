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
        (put(model_type="gpt2"), "model_type"),
        (put(hidden_act="gelu"), "hidden_act"),
        (put(use_sliding_window=True), "use_sliding_window"),
        (put(rope_scaling={"type": "longrope", "factor": 4.0}), "rope_scaling.rope_type"),
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


# Shaped like meta-llama/Llama-3.1-8B's config.json (legacy `rope_scaling` spelling).
HUB_LLAMA = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "max_position_embeddings": 131072, "attention_bias": False, "mlp_bias": False,
    "hidden_act": "silu", "tie_word_embeddings": False, "pretraining_tp": 1,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def test_llama3_config_in_both_spellings() -> None:
    old = ModelConfig.from_hf_dict(HUB_LLAMA)
    assert old.head_dim == 128 and not old.qk_norm and not old.qkv_bias
    assert old.rope_scaling is not None
    assert old.rope_scaling.original_max_position_embeddings == 8192
    new = {k: v for k, v in HUB_LLAMA.items() if k not in ("rope_theta", "rope_scaling")}
    new["rope_parameters"] = {**HUB_LLAMA["rope_scaling"], "rope_theta": 500000.0}
    assert ModelConfig.from_hf_dict(new) == old
    assert ModelConfig.from_hf_dict(json.loads(json.dumps(old.to_hf_dict()))) == old


def test_family_switches() -> None:
    qwen2 = ModelConfig.from_hf_dict({**HUB_LLAMA, "model_type": "qwen2", "rope_scaling": None,
                                      "attention_bias": True, "mlp_bias": True})
    assert qwen2.qkv_bias and not qwen2.o_bias and not qwen2.mlp_bias and not qwen2.qk_norm
    mistral = ModelConfig.from_hf_dict({**HUB_LLAMA, "model_type": "mistral",
                                        "sliding_window": 4096, "rope_scaling": None})
    assert mistral.sliding_window == 4096 and not mistral.qkv_bias
    assert ModelConfig.from_hf_dict(HUB_MOE).qk_norm


def test_unknown_model_type_lists_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"`model_type` is 'gemma'; .*'llama', 'mistral', "
                                         r"'qwen2', 'qwen3', 'qwen3_moe'"):
        ModelConfig.from_hf_dict({**HUB_LLAMA, "model_type": "gemma"})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (dict(model_type="mistral", mlp_bias=True), "mlp_bias"),
        (dict(model_type="qwen3", sliding_window=8), "sliding_window"),
        (dict(model_type="mistral", sliding_window=0), "sliding_window"),
        (dict(model_type="llama", rope_scaling={"factor": 8.0}), "rope_scaling"),
    ],
)
def test_fields_a_family_lacks_are_refused(fields: dict, field: str) -> None:
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    with pytest.raises((ValueError, msgspec.ValidationError), match=field):
        msgspec.convert({**base, **fields}, ModelConfig)


def test_bad_llama3_rope_names_the_field() -> None:
    bad = {**HUB_LLAMA, "rope_scaling": {**HUB_LLAMA["rope_scaling"], "high_freq_factor": 0.5}}
    with pytest.raises(ValueError, match="high_freq_factor"):
        ModelConfig.from_hf_dict(bad)
    missing = {**HUB_LLAMA, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    with pytest.raises(ValueError, match=r"rope_scaling.*low_freq_factor"):
        ModelConfig.from_hf_dict(missing)
