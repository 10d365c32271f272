"""`Sample`: one trajectory row as a Python object, and fast conversion to and from Arrow.

Token-level data are numpy arrays: a row can hold 3k tokens and 2k x 48 x 8 routing entries, so
`samples_to_batch` concatenates arrays and builds Arrow offsets directly, with no per-element
Python loop, and `batch_to_samples` returns zero-copy numpy views into the batch's buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from schemas.arrays import as_array, list_array, list_views
from schemas.compat import check_compatible, conform
from schemas.trajectory import (
    FINISH_REASONS,
    NARROW_EXPERT_LIMIT,
    TIMESTAMP_TYPE,
    TRAJECTORY_SCHEMA,
)

FinishReason = Literal["stop", "length", "abort", "error"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Sample(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    """One generated sample; field meanings and shapes follow `schemas.trajectory`.

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
    # [num_response_tokens, moe_num_layers, moe_top_k]. uint8 goes to `routed_experts`, uint16 to
    # `routed_experts_wide`; other integer dtypes pick by value (< 256 narrow, else wide).
    routed_experts: npt.NDArray[np.uint8] | npt.NDArray[np.uint16] | None = None


def _micros(value: datetime, field: str, sample_id: str) -> int:
    if value.tzinfo is None:
        raise ValueError(f"sample {sample_id!r}: {field} must be timezone-aware (use UTC)")
    return (value - _EPOCH) // _MICROSECOND


def _routing(sample: Sample) -> tuple[npt.NDArray[Any] | None, bool]:
    """(flattened routing or None, whether it goes to the wide column)."""
    experts = sample.routed_experts
    if experts is None:
        return None, False
    arr = np.asarray(experts)
    if arr.ndim != 3:
        raise ValueError(f"sample {sample.sample_id!r}: routed_experts must be 3-D "
                         f"[num_response_tokens, num_moe_layers, top_k], got shape {arr.shape}")
    wide = arr.dtype == np.uint16 or (arr.dtype != np.uint8 and arr.size > 0
                                      and int(arr.max()) >= NARROW_EXPERT_LIMIT)
    dtype = np.uint16 if wide else np.uint8
    return as_array(arr, dtype, "routed_experts", sample.sample_id).reshape(-1), wide


def _scalar(samples: Sequence[Sample], name: str, type_: pa.DataType) -> pa.Array:
    return pa.array([getattr(s, name) for s in samples], type=type_)


def samples_to_batch(samples: Sequence[Sample]) -> pa.RecordBatch:
    """Build a v1 record batch (schema `TRAJECTORY_SCHEMA`) from samples.

    Raises ValueError for values that do not fit their column (a negative or >= 2**31 token id, a
    naive datetime, a 2-D routing array, ...). Semantic rules (lengths, finite floats) are checked
    by `encode_trajectories`, which every publish goes through.
    """
    ids = [s.sample_id for s in samples]
    routing = [_routing(s) for s in samples]
    versions = [s.response_versions if s.response_versions is not None
                else np.full(len(s.response_tokens), s.policy_version, np.uint32) for s in samples]
    unknown = [s.finish_reason for s in samples if s.finish_reason not in FINISH_REASONS]
    if unknown:
        raise ValueError(f"finish_reason {unknown[0]!r} is not one of {FINISH_REASONS}")
    shapes = [np.shape(s.routed_experts) if s.routed_experts is not None else None
              for s in samples]
    columns: dict[str, pa.Array] = {
        "run_id": _scalar(samples, "run_id", pa.string()),
        "sample_id": _scalar(samples, "sample_id", pa.string()),
        "group_id": _scalar(samples, "group_id", pa.string()),
        "prompt_id": _scalar(samples, "prompt_id", pa.string()),
        "sample_index": _scalar(samples, "sample_index", pa.uint16()),
        "producer_id": _scalar(samples, "producer_id", pa.string()),
        "policy_version": _scalar(samples, "policy_version", pa.uint32()),
        "response_versions": list_array(versions, np.uint32, "response_versions", ids),
        "prompt_tokens": list_array([s.prompt_tokens for s in samples], np.int32,
                                    "prompt_tokens", ids),
        "response_tokens": list_array([s.response_tokens for s in samples], np.int32,
                                      "response_tokens", ids),
        "logprobs": list_array([s.logprobs for s in samples], np.float32, "logprobs", ids),
        "loss_mask": list_array([s.loss_mask for s in samples], np.bool_, "loss_mask", ids),
        "reward": _scalar(samples, "reward", pa.float32()),
        "reward_details": pa.array(
            [None if s.reward_details is None else list(s.reward_details.items())
             for s in samples], type=TRAJECTORY_SCHEMA.field("reward_details").type),
        "finish_reason": pa.DictionaryArray.from_arrays(
            pa.array([FINISH_REASONS.index(s.finish_reason) for s in samples], pa.int8()),
            pa.array(FINISH_REASONS, pa.string())),
        "moe_num_layers": pa.array([None if sh is None else sh[1] for sh in shapes], pa.uint16()),
        "moe_top_k": pa.array([None if sh is None else sh[2] for sh in shapes], pa.uint8()),
        "routed_experts": list_array([None if wide else r for r, wide in routing], np.uint8,
                                     "routed_experts", ids),
        "routed_experts_wide": list_array([r if wide else None for r, wide in routing],
                                          np.uint16, "routed_experts_wide", ids),
        "seed": _scalar(samples, "seed", pa.uint64()),
        "started_at": pa.array([_micros(s.started_at, "started_at", s.sample_id)
                                for s in samples], TIMESTAMP_TYPE),
        "finished_at": pa.array([_micros(s.finished_at, "finished_at", s.sample_id)
                                 for s in samples], TIMESTAMP_TYPE),
    }
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=TRAJECTORY_SCHEMA)


def batch_to_samples(batch: pa.RecordBatch) -> list[Sample]:
    """Turn a v1-compatible batch (e.g. from `decode_trajectories`) back into samples.

    Token arrays are zero-copy read-only views; `routed_experts` is reshaped to 3-D.
    """
    check_compatible(batch.schema, require_marker=False)
    batch = conform(batch)
    col = {name: batch.column(name).to_pylist() for name in (
        "run_id", "sample_id", "group_id", "prompt_id", "sample_index", "producer_id",
        "policy_version", "reward", "reward_details", "finish_reason", "moe_num_layers",
        "moe_top_k", "seed", "started_at", "finished_at")}
    lists = {name: list_views(batch.column(name)) for name in (
        "response_versions", "prompt_tokens", "response_tokens", "logprobs", "loss_mask",
        "routed_experts", "routed_experts_wide")}
    samples = []
    for i in range(batch.num_rows):
        flat = lists["routed_experts"][i]
        flat = lists["routed_experts_wide"][i] if flat is None else flat
        layers, top_k = col["moe_num_layers"][i], col["moe_top_k"][i]
        shaped = flat is not None and bool(layers) and bool(top_k)
        experts = flat.reshape(-1, layers, top_k) if shaped else None
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
            routed_experts=experts))
    return samples
