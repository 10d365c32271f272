"""`ModelConfig`: the architecture of a Qwen3-style decoder, read from an HF `config.json`.

Two families share one struct: dense Qwen3 (`model_type: "qwen3"`) and Qwen3-MoE
(`"qwen3_moe"`), optionally with a Qwen2-MoE style shared expert. Only architecture fields live
here; tokenizer and generation settings stay in their own files next to the checkpoint.

`from_hf_dict` accepts every spelling transformers has written for these models: rope settings
either in transformers-5 `rope_parameters` or as a top-level `rope_theta` (+ legacy
`rope_scaling`), and the expert count as `num_experts` (hub checkpoints) or `num_local_experts`
(what transformers 5.24 writes). Bad input raises `ValueError` naming the offending field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import msgspec

ModelType = Literal["qwen3", "qwen3_moe"]
SUPPORTED_ROPE_TYPES = ("default",)


class ModelConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    model_type: ModelType
    """`qwen3` (dense) or `qwen3_moe`."""
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
    """Per-head width; Qwen3 sets it explicitly (q_proj is not hidden -> hidden)."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm, including the per-head q/k norms."""
    rope_theta: float = 10_000.0
    """Base of the rotary embedding frequencies."""
    max_position_embeddings: int = 32_768
    """Longest position the model was trained for; positions beyond it are rejected."""
    tie_word_embeddings: bool = False
    """LM head shares the embedding matrix (no `lm_head.weight` in the checkpoint)."""
    attention_bias: bool = False
    """Bias on q/k/v/o projections (False for every released Qwen3)."""
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
        return self.model_type == "qwen3_moe"

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
        if model_type not in ("qwen3", "qwen3_moe"):
            raise ValueError(
                f"config.json: `model_type` is {model_type!r}; streamrl's model code supports "
                "'qwen3' and 'qwen3_moe'"
            )
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: `hidden_act` must be 'silu', got {raw['hidden_act']!r}")
        if raw.get("use_sliding_window"):
            raise ValueError(
                "config.json: `use_sliding_window` is true; sliding-window attention "
                "is not implemented, set it to false"
            )
        fields = {k: raw[k] for k in _HF_FIELDS if k in raw and raw[k] is not None}
        if "num_experts" not in fields and raw.get("num_local_experts") is not None:
            fields["num_experts"] = raw["num_local_experts"]
        if "head_dim" not in fields and {"hidden_size", "num_attention_heads"} <= fields.keys():
            fields["head_dim"] = fields["hidden_size"] // max(fields["num_attention_heads"], 1)
        fields["rope_theta"] = _rope_theta(raw)
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
        out: dict[str, Any] = {
            "architectures": ["Qwen3MoeForCausalLM" if self.is_moe else "Qwen3ForCausalLM"],
            "hidden_act": "silu",
            "use_sliding_window": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
        }
        for name in self.__struct_fields__:
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
_HF_FIELDS = tuple(f for f in ModelConfig.__struct_fields__ if f != "rope_theta")


def _rope_theta(raw: dict[str, Any]) -> float:
    # transformers 5 writes `rope_parameters`; older configs a top-level `rope_theta` and an
    # optional `rope_scaling` dict (which transformers 5 reads as `rope_parameters`).
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    name = "rope_parameters" if raw.get("rope_parameters") else "rope_scaling"
    if not isinstance(params, dict):
        raise ValueError(f"config.json: `{name}` must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"config.json: `{name}.rope_type` is {rope_type!r}; only "
            f"{', '.join(SUPPORTED_ROPE_TYPES)} rotary embeddings are implemented"
        )
    theta = params.get("rope_theta", raw.get("rope_theta", 10_000.0))
    if not isinstance(theta, int | float) or isinstance(theta, bool) or theta <= 1:
        raise ValueError(f"config.json: `rope_theta` must be a number > 1, got {theta!r}")
    return float(theta)


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
