"""`ModelConfig`: the architecture of a decoder-only model, read from an HF `config.json`.

Five families share one struct and one decoder (`model.py`); what differs between them is a few
switches, looked up per `model_type` in `FAMILIES` rather than branched on:

    model_type   q/k norm   q/k/v bias        o bias            MLP bias   other
    llama        no         attention_bias    attention_bias    mlp_bias   llama3 rope scaling
    mistral      no         no                no                no         sliding_window
    qwen2        no         yes               no                no
    qwen3        yes        attention_bias    attention_bias    no
    qwen3_moe    yes        attention_bias    attention_bias    no         routed experts

Every family may use llama3 rope scaling (transformers applies it to any of them). Only
architecture fields live here; tokenizer and generation settings stay in their own files next
to the checkpoint.

`from_hf_dict` accepts every spelling transformers has written for these models: rope settings
either in transformers-5 `rope_parameters` or as a top-level `rope_theta` (+ legacy
`rope_scaling`), and the expert count as `num_experts` (hub checkpoints) or `num_local_experts`
(what transformers 5.24 writes). Bad input raises `ValueError` naming the offending field; an
unknown `model_type` is refused with the list of supported ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, NamedTuple

import msgspec

from streamrl.models.rope import Llama3Rope, parse_rope, rope_to_hf

ModelType = Literal["llama", "mistral", "qwen2", "qwen3", "qwen3_moe"]


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


FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", False, False, frozenset({"attention_bias", "mlp_bias"})),
    "mistral": Family("MistralForCausalLM", False, False, frozenset({"sliding_window"})),
    "qwen2": Family("Qwen2ForCausalLM", False, True, frozenset()),
    "qwen3": Family("Qwen3ForCausalLM", True, False, frozenset({"attention_bias"})),
    "qwen3_moe": Family("Qwen3MoeForCausalLM", True, False, frozenset({"attention_bias"}),
                        moe=True),
}
"""model_type -> its family; the supported model types are exactly these keys."""


class ModelConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    model_type: ModelType
    """The family (`FAMILIES`): `llama`, `mistral`, `qwen2`, `qwen3` (dense) or `qwen3_moe`."""
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
    rope_scaling: Llama3Rope | None = None
    """Llama 3.1's frequency rescaling (`rope_type = "llama3"`), or None for plain RoPE."""
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

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def is_moe(self) -> bool:
        return FAMILIES[self.model_type].moe

    @property
    def qk_norm(self) -> bool:
        """Per-head RMSNorm of q and k before rotary (Qwen3 families)."""
        return FAMILIES[self.model_type].qk_norm

    @property
    def qkv_bias(self) -> bool:
        """Whether q/k/v projections have a bias."""
        return self.attention_bias or FAMILIES[self.model_type].qkv_bias

    @property
    def o_bias(self) -> bool:
        """Whether the attention output projection has a bias."""
        return self.attention_bias

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the layers with routed experts, in order; routed ids are stacked this way."""
        if not self.is_moe:
            return ()
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
        skip = _FAMILY_OPTIONS.keys() - family.options
        fields = {k: raw[k] for k in _HF_FIELDS if k not in skip and raw.get(k) is not None}
        if "num_experts" not in fields and raw.get("num_local_experts") is not None:
            fields["num_experts"] = raw["num_local_experts"]
        if "head_dim" not in fields and {"hidden_size", "num_attention_heads"} <= fields.keys():
            fields["head_dim"] = fields["hidden_size"] // max(fields["num_attention_heads"], 1)
        fields["rope_theta"], scaling = parse_rope(raw)
        if scaling is not None:
            fields["rope_scaling"] = msgspec.structs.asdict(scaling)
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
        elif self.shared_expert_intermediate_size == 0:
            del out["shared_expert_intermediate_size"]
        return out


_MOE_FIELDS = (
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
    "shared_expert_intermediate_size",
)
_HF_FIELDS = tuple(f for f in ModelConfig.__struct_fields__
                   if f not in ("rope_theta", "rope_scaling"))
_FAMILY_OPTIONS: dict[str, Any] = {"attention_bias": False, "mlp_bias": False,
                                   "sliding_window": None}
"""Fields only some families have (`Family.options`), with the value every other family has."""


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
