"""Tiny twins: a model's config.json shrunk to a few MB with the same architecture, so a frontier
recipe's model runs end to end on a CPU (recipes/frontier/*/tiny.toml).

    raw = json.loads(Path("recipes/frontier/deepseek_v3/config.json").read_text())
    tiny = twin_config(raw, vocab_size=20)       # a config.json dict; the same input, the same dict

What stays is every architectural switch, because a twin exists to run the code paths its big
sibling needs: `model_type`, the router (scoring function, correction bias, `n_group` /
`topk_group`, `routed_scaling_factor`, `norm_topk_prob`), shared experts, the first dense layers,
MLA's low-rank q (`q_lora_rank` set or None as in the original), yarn or llama3 rope scaling and
theta, partial rotary, q/k norm, biases, tied embeddings, MHA vs GQA, `head_dim` wider than
hidden / heads where the original's is. What shrinks is sizes, chosen per field, whatever the
family (`SIZES`; no branch on `model_type`):

    hidden 64, dense MLP 128, expert 32, shared expert 64 (Qwen's single width)
    4 heads; 4 kv heads when the original has one per head, else 2; head_dim 16, or 32 when
        the original's q is wider than its hidden size
    MLA: q_lora_rank 32 (None stays None), kv_lora_rank 16, qk_nope 16, qk_rope 8, v 16
    experts: 2 per router group, at least 8 (DeepSeek-V3's 8 groups: 16); top-k a quarter of
        them, at least 2 and never more than the original's or than the groups allow
    layers: the original's layer pattern from the start until two MoE layers, with at most
        one leading dense layer (first_k_dense_replace 3 -> 1); dense models get 2
    vocab: the twin's tokenizer's (`vocab_size`)

Token ids and the dtype are not architecture (the twin's tokenizer and the model code decide):
they are dropped. Everything else is copied as it is. `ValueError` names what the planner's
reader (streamrl/plan/shape.py) refuses in the result.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from streamrl.plan.shape import read_shape

HIDDEN = 64
HEADS = 4
MAX_LAYERS = 8

DROPPED = ("bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype")
"""Not architecture: the twin's tokenizer has its own ids, and the checkpoint its own dtype."""


def _head_dim(raw: dict[str, Any], value: int) -> int:
    wide = value * raw["num_attention_heads"] != raw["hidden_size"]
    return 2 * HIDDEN // HEADS if wide else HIDDEN // HEADS


def _kv_heads(raw: dict[str, Any], value: int) -> int:
    return HEADS if value == raw["num_attention_heads"] else HEADS // 2


def _num_experts(raw: dict[str, Any], value: int) -> int:
    groups = raw.get("n_group") or 1
    return groups * max(2, -(-8 // groups))


def _top_k(raw: dict[str, Any], value: int) -> int:
    experts = _num_experts(raw, 0)
    per_group, groups = experts // (raw.get("n_group") or 1), raw.get("topk_group") or 1
    return min(value, max(2, experts // 4), per_group * groups)


def _sized(size: int) -> Callable[[dict[str, Any], Any], Any]:
    """A width that keeps its zero or None (absent: no such part), else becomes `size`."""
    return lambda raw, value: value if not value else size


SIZES: dict[str, Callable[[dict[str, Any], Any], Any]] = {
    "hidden_size": _sized(HIDDEN),
    "intermediate_size": _sized(2 * HIDDEN),
    "moe_intermediate_size": _sized(HIDDEN // 2),
    "shared_expert_intermediate_size": _sized(HIDDEN),
    "num_attention_heads": _sized(HEADS),
    "num_key_value_heads": _kv_heads,
    "head_dim": _head_dim,
    "q_lora_rank": _sized(32),
    "kv_lora_rank": _sized(16),
    "qk_nope_head_dim": _sized(16),
    "qk_rope_head_dim": _sized(8),
    "v_head_dim": _sized(16),
    "num_experts": _num_experts,
    "num_local_experts": _num_experts,
    "n_routed_experts": _num_experts,
    "num_experts_per_tok": _top_k,
    "first_k_dense_replace": lambda raw, value: min(value, 1),
}
"""config.json field -> its twin's value, from the original config and the field's value.
`num_hidden_layers`, `mlp_only_layers` and `vocab_size` are set by `twin_config` itself."""


def twin_config(raw: dict[str, Any], *, vocab_size: int) -> dict[str, Any]:
    """The tiny twin of a parsed config.json (see the module docstring); deterministic."""
    read_shape(raw)  # the original must be readable first: its errors name its own fields
    if vocab_size < 2:
        raise ValueError(f"vocab_size ({vocab_size}) must be at least 2")
    twin = {k: copy.deepcopy(v) for k, v in raw.items() if k not in DROPPED}
    for field, rule in SIZES.items():
        if raw.get(field) is not None:
            twin[field] = rule(raw, raw[field])
    twin["vocab_size"] = vocab_size
    dense_only = raw.get("mlp_only_layers")
    for num_layers in range(2, MAX_LAYERS + 1):
        twin["num_hidden_layers"] = num_layers
        if dense_only is not None:
            twin["mlp_only_layers"] = [i for i in dense_only if i < num_layers]
        shape = read_shape(twin)
        if not read_shape(raw).is_moe or len(shape.moe_layers) >= 2:
            return twin
    raise ValueError(f"config.json ({raw.get('model_type')}): no twin of at most {MAX_LAYERS} "
                     "layers has two MoE layers; its layer pattern (decoder_sparse_step, "
                     "mlp_only_layers, moe_layer_freq) is too sparse for a tiny twin")
