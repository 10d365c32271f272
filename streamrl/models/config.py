"""`ModelConfig`: the architecture of a decoder-only model, read from an HF `config.json`.

Seven families share one struct and one decoder (`model.py`); what differs between them is a few
switches, looked up per `model_type` in `FAMILIES` rather than branched on:

    model_type   q/k norm     q/k/v bias       o bias           MLP bias  other
    llama        no           attention_bias   attention_bias   mlp_bias  llama3 rope scaling
    mistral      no           no               no               no        sliding_window
    qwen2        no           yes              no               no
    qwen3        yes          attention_bias   attention_bias   no
    qwen3_moe    yes          attention_bias   attention_bias   no        softmax-routed experts
    glm4_moe     use_qk_norm  attention_bias   no               no        DeepSeek-style experts,
                                                                          partial rotary
    deepseek_v3  (MLA: q_lora_rank, kv_lora_rank, ...)            no        DeepSeek-style experts

"DeepSeek-style experts" (`Family.deepseek_moe`): a sigmoid router whose correction bias
(`e_score_correction_bias`) only chooses experts, group-limited top-k (`n_group`,
`topk_group`), weights scaled by `routed_scaling_factor`, `n_shared_experts` ungated shared
experts, and dense MLPs on the first `first_k_dense_replace` layers (`moe.py`).

Every family may use llama3 rope scaling (transformers applies it to any of them). Only
architecture fields live here; tokenizer and generation settings stay in their own files next
to the checkpoint. Field names are transformers' own, except `num_experts`, which is
`n_routed_experts` in the DeepSeek-style families' config.json.

`from_hf_dict` accepts every spelling transformers has written for these models: rope settings
either in transformers-5 `rope_parameters` or as a top-level `rope_theta` (+ legacy
`rope_scaling`; GLM's `partial_rotary_factor` in either place), and the expert count as
`num_experts` (hub checkpoints), `num_local_experts` (what transformers 5.24 writes) or
`n_routed_experts` (DeepSeek, GLM). A key a config.json leaves out takes transformers' class
default for that family (`Family.defaults`). Bad input raises `ValueError` naming the
offending field; an unknown `model_type` is refused with the list of supported ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import msgspec

from streamrl.models.rope import RopeScaling, parse_rope, rope_to_hf

ModelType = Literal["llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "glm4_moe", "deepseek_v3"]


class Family(NamedTuple):
    """What a `model_type` fixes about the architecture."""

    architecture: str
    """`architectures[0]` of the config.json we write (the transformers class)."""
    qk_norm: bool
    """Per-head RMSNorm of q and k before rotary (Qwen3)."""
    qkv_bias: bool
    """Bias on q/k/v but not o, whatever `attention_bias` says (Qwen2)."""
    options: frozenset[str]
    """Optional fields of the family's config.json that we honour; others must stay default."""
    moe: bool = False
    """Routed experts (`num_experts`, ...) on the layers `moe_layers` names."""
    deepseek_moe: bool = False
    """The experts are DeepSeek-style (sigmoid router, correction bias, groups, ungated shared
    experts, `first_k_dense_replace`), not Qwen's softmax router."""
    o_bias: bool = True
    """`attention_bias` also puts a bias on o_proj (GLM: q/k/v only)."""
    defaults: Mapping[str, Any] = {}
    """transformers' class defaults for fields a config.json of this family may leave out,
    where they differ from ours."""


_DEEPSEEK_MOE = frozenset({"n_shared_experts", "n_group", "topk_group", "routed_scaling_factor",
                           "first_k_dense_replace", "num_nextn_predict_layers"})
_MLA = frozenset({"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                  "v_head_dim", "rope_interleave"})

FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", False, False, frozenset({"attention_bias", "mlp_bias"})),
    "mistral": Family("MistralForCausalLM", False, False, frozenset({"sliding_window"})),
    "qwen2": Family("Qwen2ForCausalLM", False, True, frozenset()),
    "qwen3": Family("Qwen3ForCausalLM", True, False, frozenset({"attention_bias"})),
    "qwen3_moe": Family("Qwen3MoeForCausalLM", True, False, frozenset(
        {"attention_bias", "decoder_sparse_step", "mlp_only_layers",
         "shared_expert_intermediate_size"}), moe=True),
    "glm4_moe": Family("Glm4MoeForCausalLM", False, False, frozenset(
        {"attention_bias", "partial_rotary_factor", "use_qk_norm"}) | _DEEPSEEK_MOE,
        moe=True, deepseek_moe=True, o_bias=False, defaults={
            "partial_rotary_factor": 0.5, "n_shared_experts": 1, "first_k_dense_replace": 1,
            "norm_topk_prob": True, "num_nextn_predict_layers": 1}),
    "deepseek_v3": Family("DeepseekV3ForCausalLM", False, False, frozenset(
        {"attention_bias"}) | _DEEPSEEK_MOE | _MLA, moe=True, deepseek_moe=True, defaults={
            "n_shared_experts": 1, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
            "first_k_dense_replace": 3, "norm_topk_prob": True, "num_nextn_predict_layers": 1,
            "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64, "v_head_dim": 128, "rope_interleave": True}),
}
"""model_type -> its family; the supported model types are exactly these keys."""


class ModelConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    model_type: ModelType
    """The family (`FAMILIES`): `llama`, `mistral`, `qwen2`, `qwen3` (dense), `qwen3_moe`,
    `glm4_moe` or `deepseek_v3`."""
    vocab_size: int
    """Rows of the embedding and of the LM head."""
    hidden_size: int
    """Width of the residual stream."""
    intermediate_size: int
    """Width of the dense SwiGLU MLP (dense layers of an MoE model use it too)."""
    num_hidden_layers: int
    """Number of decoder layers."""
    num_attention_heads: int
    """Query heads."""
    num_key_value_heads: int
    """Key/value heads; must divide `num_attention_heads` (grouped-query attention)."""
    head_dim: int
    """Per-head width; Qwen3 sets it explicitly (q_proj is not hidden -> hidden), the others
    default to hidden_size / num_attention_heads."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm, including the per-head q/k norms."""
    rope_theta: float = 10_000.0
    """Base of the rotary embedding frequencies."""
    rope_scaling: RopeScaling | None = None
    """Llama 3.1's frequency rescaling (`rope_type = "llama3"`) or YaRN (`"yarn"`, rope.py),
    or None for plain RoPE."""
    max_position_embeddings: int = 32_768
    """Longest position the model was trained for; positions beyond it are rejected."""
    tie_word_embeddings: bool = False
    """LM head shares the embedding matrix (no `lm_head.weight` in the checkpoint)."""
    attention_bias: bool = False
    """Bias on q/k/v/o projections (llama, qwen3; False for every released Qwen3). Qwen2's
    q/k/v bias is implied by its family (`qkv_bias`), not by this field."""
    mlp_bias: bool = False
    """Bias on gate/up/down projections (llama only)."""
    sliding_window: int | None = None
    """Mistral: a query attends to itself and the `sliding_window - 1` tokens before it; None =
    full causal attention."""
    num_experts: int = 0
    """Routed experts per MoE layer (0 for dense models)."""
    num_experts_per_tok: int = 0
    """Experts each token is routed to (top-k)."""
    moe_intermediate_size: int = 0
    """Width of each routed expert's SwiGLU MLP."""
    norm_topk_prob: bool = False
    """Renormalize the top-k router probabilities to sum to 1 per token."""
    decoder_sparse_step: int = 1
    """Layer i is MoE when (i + 1) % decoder_sparse_step == 0 and i not in `mlp_only_layers`."""
    mlp_only_layers: tuple[int, ...] = ()
    """Layers that use the dense MLP even in an MoE model."""
    shared_expert_intermediate_size: int = 0
    """Width of a shared expert added to every MoE layer behind a sigmoid gate (0 = none)."""
    n_shared_experts: int = 0
    """DeepSeek/GLM: shared experts every token passes through besides its routed ones, run as
    one SwiGLU MLP of width `n_shared_experts * moe_intermediate_size`, without a gate."""
    n_group: int = 1
    """DeepSeek/GLM: the routed experts form this many equal groups (`num_experts % n_group ==
    0`); a token may only pick experts of its best `topk_group` groups."""
    topk_group: int = 1
    """DeepSeek/GLM: groups a token's experts may come from, ranked by the sum of each group's
    two best (bias-corrected) scores."""
    routed_scaling_factor: float = 1.0
    """DeepSeek/GLM: the routed experts' weights are multiplied by this (after `norm_topk_prob`)."""
    first_k_dense_replace: int = 0
    """DeepSeek/GLM: the first this many layers use the dense MLP (`intermediate_size`); every
    later layer is MoE."""
    num_nextn_predict_layers: int = 0
    """DeepSeek/GLM multi-token-prediction layers, stored in the checkpoint as layers
    `num_hidden_layers ...`; like transformers, streamrl neither loads nor writes them."""
    partial_rotary_factor: float = 1.0
    """GLM: rotary embedding turns only the first `int(head_dim * partial_rotary_factor)` dims of
    each q/k head (`rotary_dim`); the rest pass unrotated. In transformers-5 config.json it
    sits inside `rope_parameters`."""
    use_qk_norm: bool = False
    """GLM: per-head RMSNorm of q and k before rotary (as Qwen3's family always has)."""
    q_lora_rank: int | None = None
    """DeepSeek MLA: rank of the query's low-rank projection (q_a_proj -> q_a_layernorm ->
    q_b_proj); None = one plain q_proj."""
    kv_lora_rank: int | None = None
    """DeepSeek MLA: width of the compressed key/value latent the cache keeps; None = not MLA."""
    qk_nope_head_dim: int = 0
    """DeepSeek MLA: per-head query/key dims without rotary."""
    qk_rope_head_dim: int = 0
    """DeepSeek MLA: per-head query/key dims with rotary (the key's are shared by all heads)."""
    v_head_dim: int = 0
    """DeepSeek MLA: per-head value width."""
    rope_interleave: bool = False
    """DeepSeek MLA: the checkpoint's rotary dims are interleaved pairs (2i, 2i + 1), permuted to
    the rotate-half layout before rotation, as transformers does."""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def is_moe(self) -> bool:
        return FAMILIES[self.model_type].moe

    @property
    def deepseek_moe(self) -> bool:
        """MoE layers are DeepSeek-style (`Family.deepseek_moe`; glm4_moe, deepseek_v3)."""
        return FAMILIES[self.model_type].deepseek_moe

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek): the KV cache holds a compressed latent."""
        return self.kv_lora_rank is not None

    @property
    def rotary_dim(self) -> int:
        """Dims of each q/k head that rotary embedding turns: the first
        `int(head_dim * partial_rotary_factor)`, or MLA's `qk_rope_head_dim`."""
        if self.is_mla:
            return self.qk_rope_head_dim
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def qk_norm(self) -> bool:
        """Per-head RMSNorm of q and k before rotary (Qwen3 families; GLM's `use_qk_norm`)."""
        return FAMILIES[self.model_type].qk_norm or self.use_qk_norm

    @property
    def qkv_bias(self) -> bool:
        """Whether q/k/v projections have a bias."""
        return self.attention_bias or FAMILIES[self.model_type].qkv_bias

    @property
    def o_bias(self) -> bool:
        """Whether the attention output projection has a bias."""
        return self.attention_bias and FAMILIES[self.model_type].o_bias

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the layers with routed experts, in order; routed ids are stacked this way."""
        if not self.is_moe:
            return ()
        if self.deepseek_moe:
            return tuple(range(self.first_k_dense_replace, self.num_hidden_layers))
        skip = set(self.mlp_only_layers)
        return tuple(
            i
            for i in range(self.num_hidden_layers)
            if i not in skip and (i + 1) % self.decoder_sparse_step == 0
        )

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Build from the parsed `config.json` of a transformers checkpoint."""
        model_type = raw.get("model_type")
        family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
        if family is None:
            raise ValueError(
                f"config.json: `model_type` is {model_type!r}; streamrl's model code supports "
                f"{', '.join(repr(t) for t in FAMILIES)}"
            )
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: `hidden_act` must be 'silu', got {raw['hidden_act']!r}")
        if raw.get("use_sliding_window"):
            raise ValueError(
                "config.json: `use_sliding_window` is true; Qwen's per-layer sliding window "
                "(`max_window_layers`) is not implemented, set it to false"
            )
        if family.deepseek_moe:
            _check_deepseek_router(raw)
        skip = _FAMILY_OPTIONS.keys() - family.options
        fields = dict(family.defaults)
        fields.update({k: raw[k] for k in _HF_FIELDS if k not in skip and k in raw
                       and (raw[k] is not None or k in _NULLABLE)})
        for spelling in ("n_routed_experts", "num_local_experts"):
            if "num_experts" not in fields and raw.get(spelling) is not None:
                fields["num_experts"] = raw[spelling]
        if "head_dim" not in fields and {"hidden_size", "num_attention_heads"} <= fields.keys():
            fields["head_dim"] = fields["hidden_size"] // max(fields["num_attention_heads"], 1)
        rope = raw.get("rope_parameters")
        if "partial_rotary_factor" in family.options and isinstance(rope, dict) and (
                rope.get("partial_rotary_factor") is not None):
            fields["partial_rotary_factor"] = rope["partial_rotary_factor"]
        fields["rope_theta"], scaling = parse_rope(raw)
        if scaling is not None:
            fields["rope_scaling"] = scaling  # a tagged struct: convert keeps it as is
        try:
            return msgspec.convert(fields, cls)
        except msgspec.ValidationError as e:
            # msgspec says "at `$.field`"; keep its words, they already name the field.
            raise ValueError(f"config.json: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read `config.json` (or the `config.json` inside a checkpoint directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls.from_hf_dict(json.loads(path.read_text()))

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` that transformers (5.x, and 4.x readers of `rope_theta`) can load."""
        family = FAMILIES[self.model_type]
        out: dict[str, Any] = {
            "architectures": [family.architecture],
            "hidden_act": "silu",
            "rope_parameters": rope_to_hf(self.rope_theta, self.rope_scaling),
        }
        if self.model_type.startswith("qwen"):
            out["use_sliding_window"] = False
        for name in self.__struct_fields__:
            if name == "rope_scaling" or name in _FAMILY_OPTIONS.keys() - family.options:
                continue
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        if not self.is_moe:
            for name in _MOE_FIELDS:
                del out[name]
        elif self.shared_expert_intermediate_size == 0 and not family.deepseek_moe:
            del out["shared_expert_intermediate_size"]
        if family.deepseek_moe:
            out["n_routed_experts"] = out.pop("num_experts")
        if "partial_rotary_factor" in family.options:
            # transformers 5 keeps it in rope_parameters (and reads a top-level one into it).
            out["rope_parameters"]["partial_rotary_factor"] = out.pop("partial_rotary_factor")
        return out


_MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob")
_HF_FIELDS = tuple(f for f in ModelConfig.__struct_fields__
                   if f not in ("rope_theta", "rope_scaling"))
_NULLABLE = frozenset({"q_lora_rank"})
"""Fields whose explicit null in a config.json means something (not "use the default")."""
_FAMILY_OPTIONS: dict[str, Any] = {
    "attention_bias": False, "mlp_bias": False, "sliding_window": None,
    "decoder_sparse_step": 1, "mlp_only_layers": (), "shared_expert_intermediate_size": 0,
    "n_shared_experts": 0, "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0,
    "first_k_dense_replace": 0, "num_nextn_predict_layers": 0, "partial_rotary_factor": 1.0,
    "use_qk_norm": False, "q_lora_rank": None, "kv_lora_rank": None, "qk_nope_head_dim": 0,
    "qk_rope_head_dim": 0, "v_head_dim": 0, "rope_interleave": False,
}
"""Fields only some families have (`Family.options`), with the value every other family has."""


def _check_deepseek_router(raw: dict[str, Any]) -> None:
    """DeepSeek's own config.json names its router; transformers implements only this one (the
    V2 `softmax` / `greedy` routers and a `moe_layer_freq` other than 1 it ignores)."""
    for key, supported in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc"),
                           ("moe_layer_freq", 1)):
        if raw.get(key, supported) != supported:
            raise ValueError(f"config.json: `{key}` is {raw[key]!r}; {raw['model_type']} is "
                             f"implemented with {key} = {supported!r} only (as in transformers)")


def _validate(c: ModelConfig) -> None:
    for name in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
    ):
        if getattr(c, name) <= 0:
            raise ValueError(f"`{name}` must be positive, got {getattr(c, name)}")
    if c.num_attention_heads % c.num_key_value_heads:
        raise ValueError(
            f"`num_key_value_heads` ({c.num_key_value_heads}) must divide "
            f"`num_attention_heads` ({c.num_attention_heads})"
        )
    if c.head_dim % 2:
        raise ValueError(f"`head_dim` must be even for rotary embeddings, got {c.head_dim}")
    if not 0 < c.partial_rotary_factor <= 1 or c.rotary_dim < 2 or c.rotary_dim % 2:
        raise ValueError(
            f"`partial_rotary_factor` ({c.partial_rotary_factor}) must be in (0, 1] and give an "
            f"even number of rotary dims per head (head_dim {c.head_dim} -> {c.rotary_dim})")
    if c.rms_norm_eps <= 0:
        raise ValueError(f"`rms_norm_eps` must be positive, got {c.rms_norm_eps}")
    family = FAMILIES[c.model_type]
    for name, default in _FAMILY_OPTIONS.items():
        if name not in family.options and getattr(c, name) != default:
            raise ValueError(f"`{name}` is not part of the {c.model_type} architecture; leave it "
                             f"at {default} or use a model_type that has it")
    if c.sliding_window is not None and c.sliding_window <= 0:
        raise ValueError(f"`sliding_window` must be positive or null, got {c.sliding_window}")
    if not c.is_moe:
        return
    if c.num_experts <= 0:
        raise ValueError(f"`num_experts` must be positive for qwen3_moe, got {c.num_experts}")
    if not 1 <= c.num_experts_per_tok <= c.num_experts:
        raise ValueError(
            f"`num_experts_per_tok` must be in [1, num_experts={c.num_experts}], "
            f"got {c.num_experts_per_tok}"
        )
    if c.moe_intermediate_size <= 0:
        raise ValueError(f"`moe_intermediate_size` must be positive, got {c.moe_intermediate_size}")
    if c.decoder_sparse_step <= 0:
        raise ValueError(f"`decoder_sparse_step` must be positive, got {c.decoder_sparse_step}")
    bad = [i for i in c.mlp_only_layers if not 0 <= i < c.num_hidden_layers]
    if bad:
        raise ValueError(
            f"`mlp_only_layers` has layer indices outside [0, {c.num_hidden_layers}): {bad}"
        )
    if c.shared_expert_intermediate_size < 0:
        raise ValueError(
            "`shared_expert_intermediate_size` must be >= 0 (0 = no shared expert), "
            f"got {c.shared_expert_intermediate_size}"
        )
    if c.deepseek_moe:
        _validate_deepseek_moe(c)


def _validate_deepseek_moe(c: ModelConfig) -> None:
    if c.n_shared_experts < 0:
        raise ValueError(f"`n_shared_experts` must be >= 0, got {c.n_shared_experts}")
    if c.n_group <= 0 or c.num_experts % c.n_group:
        raise ValueError(f"`n_group` ({c.n_group}) must be positive and divide "
                         f"`n_routed_experts` ({c.num_experts})")
    if c.num_experts // c.n_group < 2:
        raise ValueError(f"each of the `n_group` = {c.n_group} expert groups needs at least 2 "
                         f"experts (a group is ranked by its two best scores); lower `n_group`")
    if not 1 <= c.topk_group <= c.n_group:
        raise ValueError(f"`topk_group` must be in [1, n_group={c.n_group}], got {c.topk_group}")
    if c.num_experts_per_tok > c.topk_group * (c.num_experts // c.n_group):
        raise ValueError(
            f"`num_experts_per_tok` ({c.num_experts_per_tok}) is more than the "
            f"{c.topk_group} chosen groups hold ({c.num_experts // c.n_group} experts each); "
            "raise `topk_group` or lower `num_experts_per_tok`")
    if c.routed_scaling_factor <= 0:
        raise ValueError(f"`routed_scaling_factor` must be positive, got {c.routed_scaling_factor}")
    if not 0 <= c.first_k_dense_replace <= c.num_hidden_layers:
        raise ValueError(f"`first_k_dense_replace` must be in [0, num_hidden_layers="
                         f"{c.num_hidden_layers}], got {c.first_k_dense_replace}")
    if c.num_nextn_predict_layers < 0:
        raise ValueError(
            f"`num_nextn_predict_layers` must be >= 0, got {c.num_nextn_predict_layers}")
