"""Semantic checks on a v1 trajectory batch: what Arrow's own validation cannot know.

Every check is vectorized over the whole batch (numpy over list values and offsets), so checking a
batch costs about as much as one pass over its bytes. Each check first asks one cheap whole-column
question (a reduction such as `max`, or a null count) and only when that finds something computes
the precise location, so a valid batch pays a small fixed cost per column. The first violation
found raises `TrajectoryDecodeError` naming the row, the column and, for list columns, the token.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from streamrl.schemas.arrays import ListParts, filled_ints
from streamrl.schemas.errors import TrajectoryDecodeError
from streamrl.schemas.limits import DEFAULT_LIMITS, DecodeLimits
from streamrl.schemas.routing_read import check_packed
from streamrl.schemas.trajectory import (
    FINISH_REASONS,
    OPTIONAL_PER_TOKEN_COLUMNS,
    PER_TOKEN_COLUMNS,
    REQUIRED_COLUMNS,
    ROUTING_COLUMNS,
)

ID_COLUMNS = ("run_id", "sample_id", "group_id", "prompt_id", "producer_id")
_YEAR_10000_US = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z in microseconds
_INT32_LIMIT = 1 << 31
LIST_COLUMNS = (*PER_TOKEN_COLUMNS, "prompt_tokens", *ROUTING_COLUMNS,
                *OPTIONAL_PER_TOKEN_COLUMNS)
_FINISH_REASON_DICTIONARY = pa.array(FINISH_REASONS, pa.string())
_ALL_FINISH_REASONS_ALLOWED = np.ones(len(FINISH_REASONS), np.bool_)
_ALL_FINISH_REASONS_ALLOWED.flags.writeable = False
Columns = dict[str, pa.Array]


def _fail(what: str, where: str, code: str) -> TrajectoryDecodeError:
    return TrajectoryDecodeError(what, where=where, reason_code=code)


def _first_row(mask: npt.NDArray[np.bool_]) -> int | None:
    # count_nonzero is a plain C call: on a message's few rows it costs a third of `mask.any()`.
    return int(mask.argmax()) if np.count_nonzero(mask) else None


def _equal(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> bool:
    """Whether two int64 arrays are equal: one memcmp, cheaper than `!=` and a reduction."""
    return a.tobytes() == b.tobytes()


def _fail_at_value(parts: ListParts, bad: npt.NDArray[np.bool_], name: str, what: str,
                   code: str) -> None:
    """Raise for the first True in `bad` (a mask over the column's values), if any."""
    idx = _first_row(bad)
    if idx is not None:
        row = int(np.searchsorted(parts.offsets, idx, side="right") - 1)
        token = idx - int(parts.offsets[row])
        raise _fail(what, f"row {row}, column {name!r}, token {token}", code)


def _string_lengths(column: pa.StringArray) -> npt.NDArray[np.int32]:
    """Byte length of each string, from the offsets buffer (no compute kernel)."""
    if not len(column):
        return np.zeros(0, np.int32)
    offsets = np.frombuffer(column.buffers()[1], np.int32, len(column) + 1, column.offset * 4)
    return offsets[1:] - offsets[:-1]


def _check_required(columns: Columns) -> None:
    for name, column in columns.items():
        if column.null_count and name in REQUIRED_COLUMNS:
            row = _first_row(column.is_null().to_numpy(zero_copy_only=False))
            raise _fail(f"required column {name!r} is null", f"row {row}, column {name!r}",
                        "null_required")
    for name in ID_COLUMNS:
        lengths = _string_lengths(columns[name])
        if np.count_nonzero(lengths) != lengths.size:
            row = _first_row(lengths == 0)
            raise _fail(f"{name} is empty", f"row {row}, column {name!r}", "empty_id")
    sample_ids = columns["sample_id"]
    if len(pc.unique(sample_ids)) == len(sample_ids):
        return
    seen: set[str] = set()
    for row, sample_id in enumerate(sample_ids.to_pylist()):
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
        if _equal(parts[name].lengths, expected):
            continue
        row = _first_row(parts[name].lengths != expected)
        if row is not None:
            raise _fail(f"{name} has {parts[name].lengths[row]} entries but response_tokens has "
                        f"{expected[row]}", f"row {row}, column {name!r}", "length_mismatch")
    for name in OPTIONAL_PER_TOKEN_COLUMNS:  # null rows have length 0 and are skipped
        p = parts[name]
        row = _first_row(p.valid & (p.lengths != expected)) if p.num_valid else None
        if row is not None:
            raise _fail(f"{name} has {p.lengths[row]} entries but response_tokens has "
                        f"{expected[row]}", f"row {row}, column {name!r}", "length_mismatch")


def _check_token_ids(parts: dict[str, ListParts], vocab_size: int | None) -> None:
    # Viewed as uint32, a negative id wraps to >= 2**31, so one `max` finds both kinds of bad id.
    limit = _INT32_LIMIT if vocab_size is None else min(vocab_size, _INT32_LIMIT)
    for name in ("prompt_tokens", "response_tokens"):
        ids = parts[name].values.to_numpy()
        if not ids.size or ids.view(np.uint32).max() < limit:
            continue
        bad = (ids < 0) if vocab_size is None else ((ids < 0) | (ids >= vocab_size))
        text = "" if vocab_size is None else f" and < vocab_size {vocab_size}"
        _fail_at_value(parts[name], bad, name, f"token id must be >= 0{text}",
                       "token_out_of_range")


def _check_values(columns: Columns, parts: dict[str, ListParts],
                  vocab_size: int | None) -> None:
    _check_token_ids(parts, vocab_size)
    logprobs = parts["logprobs"].values.to_numpy()
    # max is NaN when any value is, and > 0 for +inf or any positive value; min catches -inf.
    if logprobs.size and not (logprobs.max() <= 0 and logprobs.min() > -np.inf):
        _fail_at_value(parts["logprobs"], ~np.isfinite(logprobs), "logprobs",
                       "logprob is NaN or infinite", "nonfinite_float")
        _fail_at_value(parts["logprobs"], logprobs > 0, "logprobs", "logprob is > 0",
                       "positive_logprob")
    for name in OPTIONAL_PER_TOKEN_COLUMNS:
        values = parts[name].values.to_numpy()
        if values.size and not np.isfinite(values.sum()):
            _fail_at_value(parts[name], ~np.isfinite(values), name,
                           f"{name} value is NaN or infinite", "nonfinite_float")
    row = _first_row(~np.isfinite(columns["reward"].to_numpy()))
    if row is not None:
        raise _fail("reward is NaN or infinite", f"row {row}, column 'reward'", "nonfinite_float")
    versions = parts["response_versions"]
    tokens = versions.values.to_numpy()
    policy = columns["policy_version"].to_numpy()
    if tokens.size and tokens.min() < policy.max():
        _fail_at_value(versions, tokens < np.repeat(policy, versions.lengths),
                       "response_versions", "token version is older than policy_version",
                       "version_order")
    _check_timestamps(columns["started_at"].to_numpy().view(np.int64),
                      columns["finished_at"].to_numpy().view(np.int64))


def _check_timestamps(started: npt.NDArray[np.int64], finished: npt.NDArray[np.int64]) -> None:
    if not started.size or (min(started.min(), finished.min()) >= 0
                            and max(started.max(), finished.max()) < _YEAR_10000_US
                            and not np.count_nonzero(started > finished)):
        return
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
    if len(column) == 0 or column.null_count == len(column):
        return
    offsets = column.offsets.to_numpy().astype(np.int64)
    start, count = int(offsets[0]), int(offsets[-1] - offsets[0])
    values = column.items.slice(start, count)
    keys = column.keys.slice(start, count)
    offsets -= start
    # Screen every entry (null rows' too, which only makes the screen stricter) in one pass; the
    # row-by-row walk below runs only when the screen finds something, to name the first bad row.
    finite = not values.null_count and bool(np.isfinite(values.to_numpy()).all())
    if finite and not _may_repeat_keys(keys, offsets):
        return
    items = values.to_numpy(zero_copy_only=False)
    key_list = keys.to_pylist()
    valid = ~column.is_null().to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(valid):
        lo, hi = int(offsets[row]), int(offsets[row + 1])
        row_keys = key_list[lo:hi]
        where = f"row {row}, column 'reward_details'"
        if len(set(row_keys)) != len(row_keys):
            raise _fail("reward_details has a duplicate key", where, "duplicate_key")
        bad = _first_row(~np.isfinite(items[lo:hi].astype(np.float64)))
        if bad is not None:
            raise _fail(f"reward_details[{row_keys[bad]!r}] is NaN, infinite or null",
                        f"{where}, key {row_keys[bad]!r}", "nonfinite_float")


def _may_repeat_keys(keys: pa.StringArray, offsets: npt.NDArray[np.int64]) -> bool:
    """Whether any row may hold a key twice: (row, key id) pairs are unique otherwise."""
    lengths = offsets[1:] - offsets[:-1]
    if not lengths.size or lengths.max() < 2:
        return False
    if keys.null_count:  # not valid Arrow; leave it to the row-by-row walk
        return True
    key_ids = keys.dictionary_encode().indices.to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    pairs = rows * (int(key_ids.max()) + 1) + key_ids
    return bool(np.unique(pairs).size != pairs.size)


def _check_finish_reason(column: pa.DictionaryArray) -> None:
    # Null indices were rejected as null_required and out-of-range ones by full validation.
    dictionary = column.dictionary
    if dictionary.equals(_FINISH_REASON_DICTIONARY):  # what every writer sends
        allowed = _ALL_FINISH_REASONS_ALLOWED
    else:
        allowed = np.array([v in FINISH_REASONS for v in dictionary.to_pylist()], dtype=bool)
    indices = column.indices.to_numpy().astype(np.int64)
    row = _first_row(~allowed[indices])
    if row is not None:
        value = dictionary[int(indices[row])].as_py()
        raise _fail(f"finish_reason {value!r} is not one of {', '.join(FINISH_REASONS)}",
                    f"row {row}, column 'finish_reason'", "bad_finish_reason")


def _check_routing(columns: Columns, parts: dict[str, ListParts], limits: DecodeLimits) -> None:
    narrow, wide = parts["routed_experts"], parts["routed_experts_wide"]
    packed = parts["routed_experts_packed"]
    if not narrow.num_valid and not wide.num_valid and not packed.num_valid:
        return  # a dense batch: no row is routed, so no routing rule applies
    row = _first_row(narrow.valid & wide.valid)
    if row is not None:
        raise _fail("both routed_experts and routed_experts_wide are set",
                    f"row {row}, column 'routed_experts_wide'", "both_routing_columns")
    row = _first_row(packed.valid & (narrow.valid | wide.valid))
    if row is not None:
        raise _fail("routed_experts_packed and a plain routing column are both set",
                    f"row {row}, column 'routed_experts_packed'", "both_routing_columns")
    routed = narrow.valid | wide.valid | packed.valid
    layers = filled_ints(columns["moe_num_layers"])
    top_k = filled_ints(columns["moe_top_k"])
    row = _first_row(routed & ((layers == 0) | (top_k == 0)))
    if row is not None:
        raise _fail("routed experts need moe_num_layers and moe_top_k > 0",
                    f"row {row}, column 'moe_num_layers'", "missing_moe_shape")
    plain = narrow.valid | wide.valid
    expected = parts["response_tokens"].lengths * layers * top_k
    actual = np.where(narrow.valid, narrow.lengths, wide.lengths)
    row = _first_row(plain & (actual != expected))
    if row is not None:
        name = "routed_experts" if narrow.valid[row] else "routed_experts_wide"
        raise _fail(f"{actual[row]} routed experts, expected num_response_tokens x moe_num_layers "
                    f"x moe_top_k = {expected[row]}", f"row {row}, column {name!r}",
                    "routing_shape_mismatch")
    if packed.num_valid:
        problem = check_packed(columns["moe_num_experts"], packed,
                               parts["response_tokens"].lengths, layers, top_k, limits)
        if problem is not None:
            raise _fail(*problem)


def check_batch(batch: pa.RecordBatch, *, vocab_size: int | None = None,
                limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Raise `TrajectoryDecodeError` for the first semantic violation in a v1-conformed batch
    (exactly the v1 columns, see `streamrl.schemas.compat.conform`); return None when every row
    is valid."""
    check_columns(dict(zip(batch.schema.names, map(batch.column, range(batch.num_columns)),
                           strict=True)), vocab_size=vocab_size, limits=limits)


def check_columns(columns: Columns, *, vocab_size: int | None = None,
                  limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """`check_batch` for a conformed batch's columns by name, for a caller that holds them
    already (each Arrow column wrapper costs about a microsecond)."""
    _check_required(columns)
    # Each list column's buffers are read once, for all checks.
    parts = {name: ListParts(columns[name]) for name in LIST_COLUMNS}
    _check_lists(parts, limits)
    _check_values(columns, parts, vocab_size)
    _check_reward_details(columns["reward_details"])
    _check_finish_reason(columns["finish_reason"])
    _check_routing(columns, parts, limits)
