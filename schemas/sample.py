"""`Sample`: one trajectory row as a Python object, and fast conversion to and from Arrow.

Token-level data are numpy arrays: a row can hold 3k tokens and 2k x 48 x 8 routing entries, so
`samples_to_batch` concatenates arrays and builds Arrow offsets directly, with no per-element
Python loop, and `batch_to_samples` returns zero-copy numpy views into the batch's buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import attrgetter
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from streamrl.schemas.arrays import (
    ListParts,
    list_array,
    list_array_from_values,
    list_offsets,
    list_views,
)
from streamrl.schemas.compat import check_compatible, conform
from streamrl.schemas.routing import routing_columns
from streamrl.schemas.routing_read import routing_arrays
from streamrl.schemas.trajectory import (
    FINISH_REASONS,
    OPTIONAL_PER_TOKEN_COLUMNS,
    ROUTING_COLUMNS,
    TIMESTAMP_TYPE,
    TRAJECTORY_SCHEMA,
)

FinishReason = Literal["stop", "length", "abort", "error"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_REWARD_DETAILS_TYPE = TRAJECTORY_SCHEMA.field("reward_details").type
_FINISH_REASON_DICTIONARY = pa.array(FINISH_REASONS, pa.string())
_UINT32_MAX = (1 << 32) - 1
_INT32_MAX = (1 << 31) - 1
# Columns that hold a Sample attribute as it is; with the finish-reason index and timestamps they
# are converted together, as the fields of one struct (see `_scalars`).
_PLAIN_COLUMNS = ("run_id", "sample_id", "group_id", "prompt_id", "sample_index", "producer_id",
                   "policy_version", "reward", "seed")
_FINISH_REASON_INDEX = "finish_reason_index"
_SCALARS_TYPE = pa.struct([
    *((name, TRAJECTORY_SCHEMA.field(name).type) for name in _PLAIN_COLUMNS),
    (_FINISH_REASON_INDEX, pa.int8()), ("started_at", TIMESTAMP_TYPE),
    ("finished_at", TIMESTAMP_TYPE)])
_SCALARS_NAMES = tuple(field.name for field in _SCALARS_TYPE)
_plain_values = attrgetter(*_PLAIN_COLUMNS)


class Sample(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    """One generated sample; field meanings and shapes follow `streamrl.schemas.trajectory`.

    `eq=False`: numpy fields make field-wise `==` ambiguous, so equality is identity; compare
    fields explicitly. Arrays returned by `batch_to_samples` are read-only views into Arrow memory.
    """

    run_id: str
    sample_id: str
    group_id: str
    prompt_id: str
    sample_index: int
    producer_id: str
    policy_version: int
    prompt_tokens: npt.NDArray[np.int32]  # [num_prompt_tokens]
    response_tokens: npt.NDArray[np.int32]  # [num_response_tokens]
    logprobs: npt.NDArray[np.float32]  # [num_response_tokens]
    loss_mask: npt.NDArray[np.bool_]  # [num_response_tokens]
    reward: float
    finish_reason: FinishReason
    seed: int
    started_at: datetime  # timezone-aware
    finished_at: datetime  # timezone-aware
    # [num_response_tokens]; None means every token was sampled by policy_version.
    response_versions: npt.NDArray[np.uint32] | None = None
    reward_details: dict[str, float] | None = None
    # [num_response_tokens, moe_num_layers, moe_top_k] expert ids, any integer dtype. Stored as
    # sets (`streamrl.schemas.routing`): decoded rows hold each top-k's ids ascending, uint8 when
    # moe_num_experts <= 256 else uint16.
    routed_experts: npt.NDArray[np.uint8] | npt.NDArray[np.uint16] | None = None
    # The model's routed expert count. None: the writer stores the smallest count that holds the
    # batch's ids, which is what a decoded sample then carries.
    moe_num_experts: int | None = None
    # [num_response_tokens] log ref(token) under the initial weights, scored by the producer.
    reference_logprobs: npt.NDArray[np.float32] | None = None
    # [num_response_tokens] per-token (process) rewards from the reward hook.
    token_rewards: npt.NDArray[np.float32] | None = None


def _micros(value: datetime, field: str, sample_id: str) -> int:
    if value.tzinfo is None:
        raise ValueError(f"sample {sample_id!r}: {field} must be timezone-aware (use UTC)")
    return (value - _EPOCH) // _MICROSECOND


def _scalar(samples: Sequence[Sample], name: str, converted: dict[str, pa.Array]) -> pa.Array:
    column = converted.get(name)
    if column is None:  # `_scalars` failed: convert this column alone, raising its own error
        column = pa.array([getattr(s, name) for s in samples], _SCALARS_TYPE.field(name).type)
    return column


def _timestamps(samples: Sequence[Sample], name: str, converted: dict[str, pa.Array]) -> pa.Array:
    column = converted.get(name)
    if column is None:
        column = pa.array([_micros(getattr(s, name), name, s.sample_id) for s in samples],
                          TIMESTAMP_TYPE)
    return column


def _finish_reasons(samples: Sequence[Sample], converted: dict[str, pa.Array]) -> pa.Array:
    indices = converted.get(_FINISH_REASON_INDEX)
    if indices is None:
        indices = pa.array([FINISH_REASONS.index(s.finish_reason) for s in samples], pa.int8())
    return pa.DictionaryArray.from_arrays(indices, _FINISH_REASON_DICTIONARY)


def _scalars(samples: Sequence[Sample]) -> dict[str, pa.Array] | None:
    """The one-value-per-row columns (and the finish-reason indices), converted in one pass as
    children of one struct array instead of one conversion call per column. None when any value
    fails to convert: the per-column conversions then run in column order and raise their own
    error."""
    try:
        rows = pa.array([(*_plain_values(s), FINISH_REASONS.index(s.finish_reason),
                          _micros(s.started_at, "started_at", s.sample_id),
                          _micros(s.finished_at, "finished_at", s.sample_id)) for s in samples],
                        _SCALARS_TYPE)
    except Exception:
        return None
    return {name: rows.field(i) for i, name in enumerate(_SCALARS_NAMES)}


def _default_versions(samples: Sequence[Sample]) -> pa.ListArray | None:
    """`response_versions` when no sample has them: every token by its `policy_version`, built
    in one `np.repeat`. None when some sample has versions or a version is not a uint32 int:
    then the per-sample path runs and raises what it raises."""
    versions = [s.policy_version for s in samples]
    if any(s.response_versions is not None for s in samples) or not all(
            type(v) is int and 0 <= v <= _UINT32_MAX for v in versions):
        return None
    sizes = [len(s.response_tokens) for s in samples]
    if sum(sizes) > _INT32_MAX:  # the per-sample path raises the overflow, in column order
        return None
    return list_array_from_values(np.repeat(np.array(versions, np.uint32), sizes),
                                  list_offsets(sizes, "response_versions"))


@lru_cache(maxsize=8)
def _no_reward_details(num_rows: int) -> pa.MapArray:
    """The all-null `reward_details` column (immutable, so one per batch size is shared)."""
    return pa.array([None] * num_rows, _REWARD_DETAILS_TYPE)


def _reward_details(samples: Sequence[Sample]) -> pa.MapArray:
    details = [s.reward_details for s in samples]
    if all(d is None for d in details):
        return _no_reward_details(len(details))
    return pa.array([None if d is None else list(d.items()) for d in details],
                    type=_REWARD_DETAILS_TYPE)


def samples_to_batch(samples: Sequence[Sample]) -> pa.RecordBatch:
    """Build a v1 record batch (schema `TRAJECTORY_SCHEMA`) from samples.

    Raises ValueError for values that do not fit their column (a negative or >= 2**31 token id, a
    naive datetime, a 2-D routing array, ...). Semantic rules (lengths, finite floats) are checked
    by `encode_trajectories`, which every publish goes through.
    """
    ids = [s.sample_id for s in samples]
    default_versions = _default_versions(samples)
    versions = [] if default_versions is not None else [
        s.response_versions if s.response_versions is not None
        else np.full(len(s.response_tokens), s.policy_version, np.uint32) for s in samples]
    unknown = [s.finish_reason for s in samples if s.finish_reason not in FINISH_REASONS]
    if unknown:
        raise ValueError(f"finish_reason {unknown[0]!r} is not one of {FINISH_REASONS}")
    routing = routing_columns([s.routed_experts for s in samples],
                              [s.moe_num_experts for s in samples], ids)
    scalars = _scalars(samples) or {}
    columns: dict[str, pa.Array] = {
        "run_id": _scalar(samples, "run_id", scalars),
        "sample_id": _scalar(samples, "sample_id", scalars),
        "group_id": _scalar(samples, "group_id", scalars),
        "prompt_id": _scalar(samples, "prompt_id", scalars),
        "sample_index": _scalar(samples, "sample_index", scalars),
        "producer_id": _scalar(samples, "producer_id", scalars),
        "policy_version": _scalar(samples, "policy_version", scalars),
        "response_versions": default_versions if default_versions is not None
        else list_array(versions, np.uint32, "response_versions", ids),
        "prompt_tokens": list_array([s.prompt_tokens for s in samples], np.int32,
                                    "prompt_tokens", ids),
        "response_tokens": list_array([s.response_tokens for s in samples], np.int32,
                                      "response_tokens", ids),
        "logprobs": list_array([s.logprobs for s in samples], np.float32, "logprobs", ids),
        "loss_mask": list_array([s.loss_mask for s in samples], np.bool_, "loss_mask", ids),
        "reward": _scalar(samples, "reward", scalars),
        "reward_details": _reward_details(samples),
        "finish_reason": _finish_reasons(samples, scalars),
        "moe_num_layers": routing["moe_num_layers"],
        "moe_top_k": routing["moe_top_k"],
        "routed_experts": routing["routed_experts"],
        "routed_experts_wide": routing["routed_experts_wide"],
        "moe_num_experts": routing["moe_num_experts"],
        "routed_experts_packed": routing["routed_experts_packed"],
        "seed": _scalar(samples, "seed", scalars),
        "started_at": _timestamps(samples, "started_at", scalars),
        "finished_at": _timestamps(samples, "finished_at", scalars),
        **{name: list_array([getattr(s, name) for s in samples], np.float32, name, ids)
           for name in OPTIONAL_PER_TOKEN_COLUMNS},
    }
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=TRAJECTORY_SCHEMA)


def batch_to_samples(batch: pa.RecordBatch) -> list[Sample]:
    """Turn a v1-compatible batch (e.g. from `decode_trajectories`) back into samples.

    Token arrays are zero-copy read-only views; `routed_experts` is reshaped to 3-D (a view for
    plain rows, decoded for packed ones, ids ascending within each top-k).
    """
    check_compatible(batch.schema, require_marker=False)
    batch = conform(batch)
    col = {name: batch.column(name).to_pylist() for name in (
        "run_id", "sample_id", "group_id", "prompt_id", "sample_index", "producer_id",
        "policy_version", "reward", "reward_details", "finish_reason",
        "moe_num_experts", "seed", "started_at", "finished_at")}
    lists = {name: list_views(batch.column(name)) for name in (
        "response_versions", "prompt_tokens", "response_tokens", "logprobs", "loss_mask",
        *OPTIONAL_PER_TOKEN_COLUMNS)}
    num_tokens = ListParts(batch.column("response_tokens")).lengths
    routing = routing_arrays({name: batch.column(name) for name in (
        "moe_num_layers", "moe_top_k", "moe_num_experts", *ROUTING_COLUMNS)}, num_tokens)
    samples = []
    for i in range(batch.num_rows):
        details = col["reward_details"][i]
        samples.append(Sample(
            run_id=col["run_id"][i], sample_id=col["sample_id"][i], group_id=col["group_id"][i],
            prompt_id=col["prompt_id"][i], sample_index=col["sample_index"][i],
            producer_id=col["producer_id"][i], policy_version=col["policy_version"][i],
            prompt_tokens=lists["prompt_tokens"][i], response_tokens=lists["response_tokens"][i],
            logprobs=lists["logprobs"][i], loss_mask=lists["loss_mask"][i],
            response_versions=lists["response_versions"][i], reward=col["reward"][i],
            reward_details=None if details is None else dict(details),
            finish_reason=col["finish_reason"][i], seed=col["seed"][i],
            started_at=col["started_at"][i], finished_at=col["finished_at"][i],
            routed_experts=routing[i], moe_num_experts=col["moe_num_experts"][i],
            reference_logprobs=lists["reference_logprobs"][i],
            token_rewards=lists["token_rewards"][i]))
    return samples
