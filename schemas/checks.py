"""Semantic checks on a v1 trajectory batch: what Arrow's own validation cannot know.

Every check is vectorized over the whole batch (numpy over list values and offsets), so checking a
batch costs about as much as one pass over its bytes. The first violation found raises
`TrajectoryDecodeError` naming the row, the column and, for list columns, the token.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from schemas.arrays import ListParts
from schemas.errors import TrajectoryDecodeError
from schemas.limits import DEFAULT_LIMITS, DecodeLimits
from schemas.trajectory import FINISH_REASONS, PER_TOKEN_COLUMNS, REQUIRED_COLUMNS, ROUTING_COLUMNS

ID_COLUMNS = ("run_id", "sample_id", "group_id", "prompt_id", "producer_id")
_YEAR_10000_US = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z in microseconds
LIST_COLUMNS = (*PER_TOKEN_COLUMNS, "prompt_tokens", *ROUTING_COLUMNS)


def _fail(what: str, where: str, code: str) -> TrajectoryDecodeError:
    return TrajectoryDecodeError(what, where=where, reason_code=code)


def _first_row(mask: npt.NDArray[np.bool_]) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _fail_at_value(parts: ListParts, bad: npt.NDArray[np.bool_], name: str, what: str,
                   code: str) -> None:
    """Raise for the first True in `bad` (a mask over the column's values), if any."""
    hits = np.flatnonzero(bad)
    if hits.size:
        idx = int(hits[0])
        row = int(np.searchsorted(parts.offsets, idx, side="right") - 1)
        token = idx - int(parts.offsets[row])
        raise _fail(what, f"row {row}, column {name!r}, token {token}", code)


def _check_required(batch: pa.RecordBatch) -> None:
    for name in batch.schema.names:
        column = batch.column(name)
        if name in REQUIRED_COLUMNS and column.null_count:
            row = _first_row(column.is_null().to_numpy(zero_copy_only=False))
            raise _fail(f"required column {name!r} is null", f"row {row}, column {name!r}",
                        "null_required")
    for name in ID_COLUMNS:
        row = _first_row(pc.equal(pc.binary_length(batch.column(name)), 0).to_numpy(
            zero_copy_only=False))
        if row is not None:
            raise _fail(f"{name} is empty", f"row {row}, column {name!r}", "empty_id")
    seen: set[str] = set()
    for row, sample_id in enumerate(batch.column("sample_id").to_pylist()):
        if sample_id in seen:
            raise _fail(f"sample_id {sample_id!r} appears twice in one batch",
                        f"row {row}, column 'sample_id'", "duplicate_sample_id")
        seen.add(sample_id)


def _check_lists(parts: dict[str, ListParts], limits: DecodeLimits) -> None:
    for name, p in parts.items():
        if p.values.null_count:
            bad = p.values.is_null().to_numpy(zero_copy_only=False)
            _fail_at_value(p, bad, name, f"null value inside list column {name!r}", "null_value")
    for name in ("prompt_tokens", "response_tokens"):
        row = _first_row(parts[name].lengths > limits.max_tokens_per_row)
        if row is not None:
            raise _fail(f"{parts[name].lengths[row]} tokens, limit {limits.max_tokens_per_row}",
                        f"row {row}, column {name!r}", "too_long")
    expected = parts["response_tokens"].lengths
    for name in PER_TOKEN_COLUMNS[1:]:
        row = _first_row(parts[name].lengths != expected)
        if row is not None:
            raise _fail(f"{name} has {parts[name].lengths[row]} entries but response_tokens has "
                        f"{expected[row]}", f"row {row}, column {name!r}", "length_mismatch")


def _check_values(batch: pa.RecordBatch, parts: dict[str, ListParts],
                  vocab_size: int | None) -> None:
    for name in ("prompt_tokens", "response_tokens"):
        ids = parts[name].values.to_numpy()
        bad = (ids < 0) if vocab_size is None else ((ids < 0) | (ids >= vocab_size))
        limit = "" if vocab_size is None else f" and < vocab_size {vocab_size}"
        _fail_at_value(parts[name], bad, name, f"token id must be >= 0{limit}",
                       "token_out_of_range")
    logprobs = parts["logprobs"].values.to_numpy()
    _fail_at_value(parts["logprobs"], ~np.isfinite(logprobs), "logprobs",
                   "logprob is NaN or infinite", "nonfinite_float")
    _fail_at_value(parts["logprobs"], logprobs > 0, "logprobs", "logprob is > 0",
                   "positive_logprob")
    row = _first_row(~np.isfinite(batch.column("reward").to_numpy()))
    if row is not None:
        raise _fail("reward is NaN or infinite", f"row {row}, column 'reward'", "nonfinite_float")
    versions = parts["response_versions"]
    policy = np.repeat(batch.column("policy_version").to_numpy(), versions.lengths)
    _fail_at_value(versions, versions.values.to_numpy() < policy, "response_versions",
                   "token version is older than policy_version", "version_order")
    started = batch.column("started_at").cast(pa.int64()).to_numpy()
    finished = batch.column("finished_at").cast(pa.int64()).to_numpy()
    for name, micros in (("started_at", started), ("finished_at", finished)):
        # Python's datetime (what readers convert to) stops at year 9999; before 1970 is a bug.
        row = _first_row((micros < 0) | (micros >= _YEAR_10000_US))
        if row is not None:
            raise _fail(f"{name} is before 1970 or after 9999", f"row {row}, column {name!r}",
                        "timestamp_out_of_range")
    row = _first_row(started > finished)
    if row is not None:
        raise _fail("started_at is after finished_at", f"row {row}, column 'finished_at'",
                    "time_order")


def _check_reward_details(column: pa.MapArray) -> None:
    if len(column) == 0:
        return
    offsets = column.offsets.to_numpy().astype(np.int64)
    items = column.items.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(
        zero_copy_only=False)
    keys = column.keys.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pylist()
    offsets -= offsets[0]
    valid = ~column.is_null().to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(valid):
        lo, hi = int(offsets[row]), int(offsets[row + 1])
        row_keys = keys[lo:hi]
        where = f"row {row}, column 'reward_details'"
        if len(set(row_keys)) != len(row_keys):
            raise _fail("reward_details has a duplicate key", where, "duplicate_key")
        bad = _first_row(~np.isfinite(items[lo:hi].astype(np.float64)))
        if bad is not None:
            raise _fail(f"reward_details[{row_keys[bad]!r}] is NaN, infinite or null",
                        f"{where}, key {row_keys[bad]!r}", "nonfinite_float")


def _check_finish_reason(column: pa.DictionaryArray) -> None:
    # Null indices were rejected as null_required and out-of-range ones by full validation.
    allowed = np.array([v in FINISH_REASONS for v in column.dictionary.to_pylist()], dtype=bool)
    indices = column.indices.to_numpy().astype(np.int64)
    row = _first_row(~allowed[indices])
    if row is not None:
        value = column.dictionary[int(indices[row])].as_py()
        raise _fail(f"finish_reason {value!r} is not one of {', '.join(FINISH_REASONS)}",
                    f"row {row}, column 'finish_reason'", "bad_finish_reason")


def _check_routing(batch: pa.RecordBatch, parts: dict[str, ListParts]) -> None:
    narrow, wide = parts["routed_experts"], parts["routed_experts_wide"]
    row = _first_row(narrow.valid & wide.valid)
    if row is not None:
        raise _fail("both routed_experts and routed_experts_wide are set",
                    f"row {row}, column 'routed_experts_wide'", "both_routing_columns")
    routed = narrow.valid | wide.valid
    layers_col, top_k_col = batch.column("moe_num_layers"), batch.column("moe_top_k")
    layers = layers_col.fill_null(0).to_numpy().astype(np.int64)
    top_k = top_k_col.fill_null(0).to_numpy().astype(np.int64)
    row = _first_row(routed & ((layers == 0) | (top_k == 0)))
    if row is not None:
        raise _fail("routed experts need moe_num_layers and moe_top_k > 0",
                    f"row {row}, column 'moe_num_layers'", "missing_moe_shape")
    expected = parts["response_tokens"].lengths * layers * top_k
    actual = np.where(narrow.valid, narrow.lengths, wide.lengths)
    row = _first_row(routed & (actual != expected))
    if row is not None:
        name = "routed_experts" if narrow.valid[row] else "routed_experts_wide"
        raise _fail(f"{actual[row]} routed experts, expected num_response_tokens x moe_num_layers "
                    f"x moe_top_k = {expected[row]}", f"row {row}, column {name!r}",
                    "routing_shape_mismatch")


def check_batch(batch: pa.RecordBatch, *, vocab_size: int | None = None,
                limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Raise `TrajectoryDecodeError` for the first semantic violation in a v1-conformed batch
    (exactly the v1 columns, see `schemas.compat.conform`); return None when every row is valid."""
    _check_required(batch)
    parts = {name: ListParts(batch.column(name)) for name in LIST_COLUMNS}
    _check_lists(parts, limits)
    _check_values(batch, parts, vocab_size)
    _check_reward_details(batch.column("reward_details"))
    _check_finish_reason(batch.column("finish_reason"))
    _check_routing(batch, parts)
