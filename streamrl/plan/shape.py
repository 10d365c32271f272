"""`ModelShape`: what the planner needs of an architecture, read from an HF `config.json` dict
alone (no weights, no model code), for every family it knows.

    model_type   attention                         MLP
    llama        GQA (q/k/v/o bias: attention_bias) dense SwiGLU (bias: mlp_bias)
    mistral      GQA                               dense SwiGLU
    qwen2        GQA, q/k/v bias                   dense SwiGLU
    qwen3        GQA, q/k norm                     dense SwiGLU
    qwen3_moe    GQA, q/k norm                     routed experts where decoder_sparse_step and
                                                   mlp_only_layers say; shared expert if sized
    deepseek_v3  MLA (q_lora_rank, kv_lora_rank,   dense for the first_k_dense_replace layers,
                 qk_nope/qk_rope/v head dims)      then n_routed_experts + n_shared_experts,
                                                   sigmoid router with a correction bias
    glm4_moe     GQA, q/k/v bias, q/k norm if      as deepseek_v3 (first_k_dense_replace,
                 use_qk_norm, partial rotary       n_shared_experts, correction bias)

Kimi K2 is a `deepseek_v3` config. Multi-token-prediction layers (`num_nextn_predict_layers`)
are recorded in `num_mtp_layers` and excluded from every count: the published sizes
(DeepSeek-V3 671B, GLM-4.5 355B) exclude them, and an RL run does not train them.

The readers are a table by `model_type` (`READERS`); an unknown type is refused with the list.
This module is the planner's own reading: streamrl/models/config.py is what the model code runs.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ModelShape(msgspec.Struct, kw_only=True, frozen=True):
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    tie_word_embeddings: bool
    attention: Literal["gqa", "mla"]
    num_heads: int
    num_kv_heads: int
    """GQA key/value heads (MLA: every head has its own k and v, decompressed from the latent)."""
    head_dim: int
    """GQA per-head width of q, k and v (MLA: unused)."""
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    q_lora_rank: int | None = None
    """MLA: rank of q's low-rank path (None: a full q_proj, as DeepSeek-V2-Lite)."""
    kv_lora_rank: int = 0
    """MLA: width of the compressed latent c_kv that the KV cache holds."""
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    """MLA: the decoupled rotary key, shared by all heads and cached beside the latent."""
    v_head_dim: int = 0
    intermediate_size: int
    """Width of the dense SwiGLU MLP."""
    mlp_bias: bool = False
    num_experts: int = 0
    top_k: int = 0
    moe_intermediate_size: int = 0
    shared_intermediate_size: int = 0
    """Total width of the shared expert(s) on every MoE layer (n_shared_experts x expert width)."""
    shared_gate: bool = False
    """A sigmoid gate [hidden -> 1] on the shared expert (Qwen2-MoE style)."""
    router_bias: bool = False
    """The aux-loss-free correction bias (`e_score_correction_bias`, one per expert)."""
    moe_layers: tuple[int, ...] = ()
    """Indices of the decoder layers whose MLP is routed experts."""
    num_mtp_layers: int = 0
    """Multi-token-prediction layers in the checkpoint; excluded from every count."""

    @property
    def is_moe(self) -> bool:
        return bool(self.moe_layers)


def _get(raw: dict[str, Any], key: str, default: Any = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        raise ValueError(f"config.json ({raw.get('model_type')}): `{key}` is missing")
    return value


def _common(raw: dict[str, Any]) -> dict[str, Any]:
    hidden, heads = _get(raw, "hidden_size"), _get(raw, "num_attention_heads")
    return {
        "model_type": raw["model_type"], "vocab_size": _get(raw, "vocab_size"),
        "hidden_size": hidden, "num_layers": _get(raw, "num_hidden_layers"),
        "tie_word_embeddings": bool(raw.get("tie_word_embeddings", False)),
        "attention": "gqa", "num_heads": heads,
        "num_kv_heads": raw.get("num_key_value_heads") or heads,
        "head_dim": raw.get("head_dim") or hidden // heads,
        "intermediate_size": _get(raw, "intermediate_size"),
    }


def _llama(raw: dict[str, Any]) -> ModelShape:
    bias = bool(raw.get("attention_bias", False))
    return ModelShape(**_common(raw), qkv_bias=bias, o_bias=bias,
                      mlp_bias=bool(raw.get("mlp_bias", False)))


def _mistral(raw: dict[str, Any]) -> ModelShape:
    return ModelShape(**_common(raw))


def _qwen2(raw: dict[str, Any]) -> ModelShape:
    return ModelShape(**_common(raw), qkv_bias=True)


def _qwen3(raw: dict[str, Any]) -> ModelShape:
    bias = bool(raw.get("attention_bias", False))
    return ModelShape(**_common(raw), qkv_bias=bias, o_bias=bias, qk_norm=True)


def _qwen3_moe(raw: dict[str, Any]) -> ModelShape:
    num_layers = _get(raw, "num_hidden_layers")
    step = raw.get("decoder_sparse_step") or 1
    dense = set(raw.get("mlp_only_layers") or ())
    moe = tuple(i for i in range(num_layers) if (i + 1) % step == 0 and i not in dense)
    bias = bool(raw.get("attention_bias", False))
    shared = raw.get("shared_expert_intermediate_size") or 0
    return ModelShape(
        **_common(raw), qkv_bias=bias, o_bias=bias, qk_norm=True,
        num_experts=raw.get("num_experts") or _get(raw, "num_local_experts"),
        top_k=_get(raw, "num_experts_per_tok"),
        moe_intermediate_size=_get(raw, "moe_intermediate_size"),
        shared_intermediate_size=shared, shared_gate=shared > 0, moe_layers=moe)


def _routed(raw: dict[str, Any]) -> dict[str, Any]:
    """The DeepSeek-style MoE fields deepseek_v3 and glm4_moe share."""
    num_layers = _get(raw, "num_hidden_layers")
    first_dense = raw.get("first_k_dense_replace") or 0
    freq = raw.get("moe_layer_freq") or 1
    width = _get(raw, "moe_intermediate_size")
    return {
        "num_experts": _get(raw, "n_routed_experts"), "top_k": _get(raw, "num_experts_per_tok"),
        "moe_intermediate_size": width,
        "shared_intermediate_size": (raw.get("n_shared_experts") or 0) * width,
        "router_bias": True,
        "moe_layers": tuple(i for i in range(first_dense, num_layers) if i % freq == 0),
        "num_mtp_layers": raw.get("num_nextn_predict_layers") or 0,
    }


def _deepseek_v3(raw: dict[str, Any]) -> ModelShape:
    common = _common(raw) | {"attention": "mla", "num_kv_heads": _get(raw, "num_attention_heads"),
                             "head_dim": 0}
    return ModelShape(
        **common, **_routed(raw), q_lora_rank=raw.get("q_lora_rank"),
        kv_lora_rank=_get(raw, "kv_lora_rank"), qk_nope_head_dim=_get(raw, "qk_nope_head_dim"),
        qk_rope_head_dim=_get(raw, "qk_rope_head_dim"), v_head_dim=_get(raw, "v_head_dim"),
        qkv_bias=bool(raw.get("attention_bias", False)))


def _glm4_moe(raw: dict[str, Any]) -> ModelShape:
    return ModelShape(**_common(raw), **_routed(raw),
                      qkv_bias=bool(raw.get("attention_bias", False)),
                      qk_norm=bool(raw.get("use_qk_norm", False)))


READERS = {
    "llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe, "deepseek_v3": _deepseek_v3, "glm4_moe": _glm4_moe,
}
"""model_type -> the reader of its config.json."""


def read_shape(raw: dict[str, Any]) -> ModelShape:
    """The shape of a parsed config.json; ValueError naming the field for anything missing."""
    model_type = raw.get("model_type")
    reader = READERS.get(model_type) if isinstance(model_type, str) else None
    if reader is None:
        raise ValueError(f"config.json: `model_type` is {model_type!r}; the planner knows "
                         f"{', '.join(sorted(READERS))}")
    from streamrl.models.config import FAMILIES  # the keys a config.json may leave out

    family = FAMILIES.get(model_type)
    defaults = family.defaults if family is not None else {}
    return reader({**defaults, **{k: v for k, v in raw.items() if v is not None or k not in
                                  defaults or k == "q_lora_rank"}})
