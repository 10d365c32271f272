"""The trajectory Arrow schema, v1: one row per sample, the narrowest types that hold the data.

Required columns (never null) are what a trainer needs to train on a sample and what an audit needs
to trace it: ids, versions, tokens, logprobs, loss mask, reward, finish reason, seed, timestamps.
Optional columns (nullable, may also be absent from an older writer's batch and then read as null):
`reward_details` (null = no breakdown) and the MoE routing group `moe_num_layers`, `moe_top_k`,
`moe_num_experts`, `routed_experts`, `routed_experts_wide`, `routed_experts_packed` (null for dense
models, or when routing was not recorded; `streamrl.schemas.routing` says which column a writer
picks), `reference_logprobs` (null unless the producer scored a KL reference) and
`token_rewards` (null unless the reward hook returned per-token rewards).

List children are declared nullable (Arrow's default, so hand-built batches match the type) but the
decoder rejects nulls inside any list: a null token has no meaning.

Evolution rules live in docs/schema-evolution.md; `streamrl.schemas.compat` enforces them.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_NAME = "trajectory"
SCHEMA_VERSION = 1  # the major version; additive optional columns do not bump it
META_SCHEMA = b"streamrl.schema"
META_VERSION = b"streamrl.schema_version"

FINISH_REASONS: tuple[str, ...] = ("stop", "length", "abort", "error")
# The dictionary every writer uses, in this order, so indices are stable across batches.
FINISH_REASON_TYPE = pa.dictionary(pa.int8(), pa.string())
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
# The routing column for models with at most 256 routed experts; `routed_experts_wide` otherwise.
NARROW_EXPERT_LIMIT = 256
# The shape of one row of every list column, also written into its Arrow field metadata under
# META_SHAPE, so a reader in any language sees it (routing rows are flattened in C order).
META_SHAPE = b"streamrl.shape"
_PER_TOKEN = "[num_response_tokens]"
_ROUTED = "[num_response_tokens, moe_num_layers, moe_top_k]"
LIST_SHAPES: dict[str, str] = {
    "response_versions": _PER_TOKEN, "prompt_tokens": "[num_prompt_tokens]",
    "response_tokens": _PER_TOKEN, "logprobs": _PER_TOKEN, "loss_mask": _PER_TOKEN,
    "routed_experts": _ROUTED, "routed_experts_wide": _ROUTED,
    "routed_experts_packed": "[ceil(num_response_tokens * moe_num_layers * bits / 8)]",
    "reference_logprobs": _PER_TOKEN, "token_rewards": _PER_TOKEN,
}


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _optional(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


def _with_shape(field: pa.Field) -> pa.Field:
    shape = LIST_SHAPES.get(field.name)
    return field if shape is None else field.with_metadata({META_SHAPE: shape.encode()})


TRAJECTORY_FIELDS: tuple[pa.Field, ...] = (
    _required("run_id", pa.string()),
    _required("sample_id", pa.string()),  # stable, unique across the run; the dedup key
    _required("group_id", pa.string()),  # samples of one prompt share it (GRPO groups)
    _required("prompt_id", pa.string()),
    _required("sample_index", pa.uint16()),  # index within its group
    _required("producer_id", pa.string()),
    _required("policy_version", pa.uint32()),  # weights version when generation started
    # Weights may change mid-sample: the version that sampled each token. All >= policy_version.
    _required("response_versions", pa.list_(pa.uint32())),  # [num_response_tokens]
    _required("prompt_tokens", pa.list_(pa.int32())),  # [num_prompt_tokens]
    _required("response_tokens", pa.list_(pa.int32())),  # [num_response_tokens]
    _required("logprobs", pa.list_(pa.float32())),  # [num_response_tokens] sampling logprobs, <= 0
    _required("loss_mask", pa.list_(pa.bool_())),  # [num_response_tokens] True = trained on
    _required("reward", pa.float32()),
    _optional("reward_details", pa.map_(pa.string(), pa.float32())),  # {component: value}
    _required("finish_reason", FINISH_REASON_TYPE),  # one of FINISH_REASONS
    _optional("moe_num_layers", pa.uint16()),
    _optional("moe_top_k", pa.uint8()),
    # [num_response_tokens, moe_num_layers, moe_top_k] flattened C-order; <= 256 experts.
    _optional("routed_experts", pa.list_(pa.uint8())),
    # [num_response_tokens, moe_num_layers, moe_top_k] flattened C-order; > 256 experts.
    # At most one of the three routing columns is non-null in a row.
    _optional("routed_experts_wide", pa.list_(pa.uint16())),
    # The expert count; with routed_experts_packed, the one its ranks are taken over.
    _optional("moe_num_experts", pa.uint16()),
    # [ceil(num_response_tokens * moe_num_layers * bits / 8)] bytes: each (token, layer) top-k
    # as a set, its rank bit-packed (schemas/routing_pack.py); decodes to ids ascending per top-k.
    _optional("routed_experts_packed", pa.list_(pa.uint8())),
    _required("seed", pa.uint64()),
    _required("started_at", TIMESTAMP_TYPE),
    _required("finished_at", TIMESTAMP_TYPE),
    # [num_response_tokens] log ref(token) under the run's initial weights at the sampler's
    # temperature, scored by the producer (`[trainer.algorithm.kl] reference = "producer"`).
    _optional("reference_logprobs", pa.list_(pa.float32())),
    # [num_response_tokens] per-token (process) rewards from the reward hook, if it gave any.
    _optional("token_rewards", pa.list_(pa.float32())),
)

TRAJECTORY_SCHEMA: pa.Schema = pa.schema(
    [_with_shape(f) for f in TRAJECTORY_FIELDS],
    metadata={META_SCHEMA: SCHEMA_NAME.encode(), META_VERSION: str(SCHEMA_VERSION).encode()},
)

FIELDS_BY_NAME: dict[str, pa.Field] = {f.name: f for f in TRAJECTORY_FIELDS}
REQUIRED_COLUMNS: frozenset[str] = frozenset(f.name for f in TRAJECTORY_FIELDS if not f.nullable)
OPTIONAL_COLUMNS: frozenset[str] = frozenset(f.name for f in TRAJECTORY_FIELDS if f.nullable)
# Columns whose every row is one entry per response token.
PER_TOKEN_COLUMNS: tuple[str, ...] = (
    "response_tokens", "logprobs", "loss_mask", "response_versions")
# Optional columns that, when set, hold one entry per response token.
OPTIONAL_PER_TOKEN_COLUMNS: tuple[str, ...] = ("reference_logprobs", "token_rewards")
ROUTING_COLUMNS: tuple[str, ...] = (
    "routed_experts", "routed_experts_wide", "routed_experts_packed")
