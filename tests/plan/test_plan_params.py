"""Parameter counts from config.json alone against the sizes the model makers published.

Published figures are rounded, and vendors count "active" two ways: Qwen, DeepSeek and Moonshot
include the embedding and the LM head, Zhipu (GLM-4.5) leaves both out. Each row names which
count it compares and the tolerance; 1% everywhere except where the count of the released
config.json's tensors and the published rounding disagree by more, said per row.
"""

from __future__ import annotations

import json

import pytest

from streamrl.plan import count_params, read_shape
from tests.helpers import REPO

FRONTIER = REPO / "recipes" / "frontier"


def config(name: str, **changes: object) -> dict:
    return json.loads((FRONTIER / name / "config.json").read_text()) | changes


# GLM-4.5 (no recipe here): GLM-4.5-Air's shape at GLM-4.5's published sizes.
GLM45 = config("glm45_air", hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536,
               num_hidden_layers=92, n_routed_experts=160, first_k_dense_replace=3,
               use_qk_norm=True)

# (name, config, total, active, active count, tolerance for the active figure)
PUBLISHED = [
    ("DeepSeek-V3", config("deepseek_v3"), 671e9, 37e9, "active", 0.016),  # 37.55B: "37B"
    ("Qwen3-30B-A3B", config("qwen3_30b_a3b"), 30.5e9, 3.3e9, "active", 0.017),  # 3.353B: "3.3B"
    ("Qwen3-235B-A22B", config("qwen3_235b_a22b"), 235e9, 22e9, "active", 0.01),
    ("GLM-4.5-Air", config("glm45_air"), 106e9, 12e9, "active_non_embedding", 0.016),
    ("GLM-4.5", GLM45, 355e9, 32e9, "active_non_embedding", 0.01),
]


@pytest.mark.parametrize(("name", "raw", "total", "active", "count", "tol"), PUBLISHED,
                         ids=[row[0] for row in PUBLISHED])
def test_published_sizes(name: str, raw: dict, total: float, active: float, count: str,
                         tol: float) -> None:
    params = count_params(read_shape(raw))
    assert params.total == pytest.approx(total, rel=0.01), name
    assert getattr(params, count) == pytest.approx(active, rel=tol), name


def test_kimi_k2() -> None:
    """Kimi K2's model card says 1T total / 32B active, its report 1.04T. The released config's
    tensors (no multi-token-prediction layer) count 1.026T total and 32.86B active with the
    embedding and LM head (31.69B without the input embedding): within 1.5% of 1.04T, and the
    active figure within 3% of 32B."""
    params = count_params(read_shape(config("kimi_k2")))
    assert params.total == pytest.approx(1.04e12, rel=0.015)
    assert params.active == pytest.approx(32e9, rel=0.03)


def test_mtp_layers_excluded_and_mla_counted() -> None:
    """DeepSeek-V3's checkpoint holds one MTP layer (685B with it); the 671B excludes it. MLA's
    attention is 187.1M per layer: q through rank 1536, the 512 + 64 latent, k/v decompression."""
    shape = read_shape(config("deepseek_v3"))
    assert shape.num_mtp_layers == 1 and len(shape.moe_layers) == 58
    layer = count_params(shape).layers[0]
    h, heads = 7168, 128
    mla = (h * 1536 + 1536 + 1536 * heads * 192 + h * 576 + 512 + 512 * heads * 256
           + heads * 128 * h)
    assert layer.attention == mla


def test_unknown_model_type_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'gpt2'.*deepseek_v3.*glm4_moe"):
        read_shape({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="n_routed_experts"):
        read_shape({k: v for k, v in config("deepseek_v3").items() if k != "n_routed_experts"})


TINY = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
FAMILIES = [
    {"model_type": "qwen3"},
    {"model_type": "qwen2"},
    {"model_type": "llama", "attention_bias": True, "mlp_bias": True},
    {"model_type": "mistral", "tie_word_embeddings": True},
    {"model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2,
     "moe_intermediate_size": 24, "mlp_only_layers": [0]},
    # Sparse configs: the keys left out (dense first layers, shared experts, groups, partial
    # rotary, q rank) take the family's transformers defaults in the planner as in the model.
    {"model_type": "glm4_moe", "n_routed_experts": 4, "num_experts_per_tok": 2,
     "moe_intermediate_size": 24, "n_group": 1, "topk_group": 1},
    {"model_type": "deepseek_v3", "num_hidden_layers": 4, "n_routed_experts": 16,
     "num_experts_per_tok": 2, "moe_intermediate_size": 24, "q_lora_rank": 24,
     "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8},
]


@pytest.mark.parametrize("family", FAMILIES, ids=[f["model_type"] for f in FAMILIES])
def test_count_equals_the_model_codes_parameters(family: dict) -> None:
    """For the families the repository's model runs, the count is its parameter count."""
    from streamrl.models import CausalLM, ModelConfig
    raw = TINY | family
    model = CausalLM(ModelConfig.from_hf_dict(raw))
    assert count_params(read_shape(raw)).total == sum(p.numel() for p in model.parameters())
