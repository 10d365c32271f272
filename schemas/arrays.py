"""numpy <-> Arrow list columns without per-element Python loops."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from itertools import accumulate
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

_INT32_MAX = (1 << 31) - 1
_NO_OFFSETS = np.zeros(1, np.int64)
_NO_OFFSETS.flags.writeable = False


def filled_ints(column: pa.Array) -> npt.NDArray[np.int64]:
    """An integer column as int64 with nulls read as 0."""
    if column.null_count:
        column = column.fill_null(0)
    return column.to_numpy().astype(np.int64)


def validity(column: pa.Array) -> npt.NDArray[np.bool_]:
    """True where `column` is not null. Columns with no nulls or only nulls (the common cases:
    required columns, dense batches' routing columns) cost no compute kernel."""
    num_nulls, num_rows = column.null_count, len(column)
    if num_nulls == 0:
        return np.ones(num_rows, np.bool_)
    if num_nulls == num_rows:
        return np.zeros(num_rows, np.bool_)
    return ~column.is_null().to_numpy(zero_copy_only=False)


class ListParts:
    """A list column as numpy: offsets rebased to 0, values, per-row lengths and validity.

    The offsets are read once from the column's buffer (no Arrow array wrapper) and `values` is the
    child sliced to the rows' range, so values under null rows are included, as in Arrow itself.
    """

    def __init__(self, column: pa.ListArray) -> None:
        self._column = column
        num_rows = len(column)
        values: pa.Array = column.values
        if num_rows:  # a zero-row list may legally have an empty offsets buffer
            raw = np.frombuffer(column.buffers()[1], np.int32, num_rows + 1,
                                column.offset * 4).astype(np.int64)
            start, stop = int(raw[0]), int(raw[-1])
            self.offsets = raw - start if start else raw
            if start or stop != len(values):
                values = values.slice(start, stop - start)
        else:
            self.offsets = _NO_OFFSETS
            values = values.slice(0, 0)
        self.values = values
        self.lengths = self.offsets[1:] - self.offsets[:-1]
        self.num_valid = num_rows - column.null_count

    @cached_property
    def valid(self) -> npt.NDArray[np.bool_]:
        return validity(self._column)


def as_array(value: Any, dtype: type[np.generic], name: str, sample_id: str) -> npt.NDArray[Any]:
    """`value` as a numpy array of `dtype`, refusing lossy conversions (out-of-range integers,
    floats into integer columns) instead of wrapping silently as `astype` would."""
    arr = np.asarray(value)
    target = np.dtype(dtype)
    if arr.dtype == target or arr.size == 0:
        return arr.astype(target, copy=False)
    kind = arr.dtype.kind
    where = f"sample {sample_id!r}: {name}"
    if target.kind == "f":
        if kind not in "fiu":
            raise ValueError(f"{where} must be numbers, got dtype {arr.dtype}")
        return arr.astype(target)
    if kind not in "iub":
        raise ValueError(f"{where} must be integers, got dtype {arr.dtype}")
    if target.kind == "b":
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{where} must hold only 0/1 or booleans")
        return arr.astype(target)
    info = np.iinfo(target)
    low, high = int(arr.min()), int(arr.max())
    if low < info.min or high > info.max:
        raise ValueError(f"{where} holds {low if low < info.min else high}, outside "
                         f"[{info.min}, {info.max}] of {target}")
    return arr.astype(target)


def list_array(rows: Sequence[Any | None], dtype: type[np.generic], name: str,
               sample_ids: Sequence[str]) -> pa.ListArray:
    """One list<dtype> column from per-row arrays (flattened C-order); None rows are null.

    The column is assembled from numpy buffers directly (no per-call conversion machinery): one
    concatenation for the values, offsets from the row sizes, validity packed from the None rows.
    """
    target = np.dtype(dtype)
    flat = [None if row is None
            else row if type(row) is np.ndarray and row.dtype == target and row.ndim == 1
            else as_array(row, dtype, name, sample_id).reshape(-1)
            for row, sample_id in zip(rows, sample_ids, strict=True)]
    present = [a for a in flat if a is not None]
    if not present:  # e.g. the routing columns of a dense batch
        return pa.nulls(len(flat), _list_type(target))
    offsets = list_offsets([0 if a is None else a.size for a in flat], name)
    valid = None
    if len(present) < len(flat):
        valid = np.fromiter((a is not None for a in flat), np.bool_, len(flat))
    return list_array_from_values(np.concatenate(present), offsets, valid)


def list_offsets(sizes: Sequence[int], name: str) -> npt.NDArray[np.int32]:
    """Arrow list offsets for rows of `sizes` values; ValueError when they overflow int32."""
    offsets = list(accumulate(sizes, initial=0))
    if offsets[-1] > _INT32_MAX:
        raise ValueError(f"{name}: {offsets[-1]} values in one batch overflow int32 list "
                         "offsets; split the batch")
    return np.array(offsets, np.int32)


def list_array_from_values(values: npt.NDArray[Any], offsets: npt.NDArray[np.int32],
                           valid: npt.NDArray[np.bool_] | None = None) -> pa.ListArray:
    """One list column from all rows' values concatenated (1-D) and `list_offsets`; rows where
    `valid` is False are null (and have no values)."""
    type_ = _list_type(values.dtype)
    num_nulls = 0 if valid is None else len(valid) - np.count_nonzero(valid)
    validity = None if not num_nulls else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.ListArray.from_buffers(
        type_, len(offsets) - 1, [validity, pa.py_buffer(offsets)], null_count=num_nulls,
        children=[_flat_array(values, type_.value_type)])


_LIST_TYPES: dict[np.dtype[Any], pa.ListType] = {}


def _list_type(dtype: np.dtype[Any]) -> pa.ListType:
    """list<dtype>, built once per dtype."""
    type_ = _LIST_TYPES.get(dtype)
    if type_ is None:
        type_ = _LIST_TYPES[dtype] = pa.list_(pa.from_numpy_dtype(dtype))
    return type_


def _flat_array(values: npt.NDArray[Any], type_: pa.DataType) -> pa.Array:
    """A null-free Arrow array over a 1-D numpy array: zero-copy, booleans packed to bits."""
    if values.dtype == np.bool_:
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(values))
    return pa.Array.from_buffers(type_, len(values), [None, data], null_count=0)


def list_views(column: pa.ListArray) -> list[npt.NDArray[Any] | None]:
    """Per-row numpy views of a list column (zero-copy for numeric values; None for null rows)."""
    parts = ListParts(column)
    values = parts.values.to_numpy(zero_copy_only=False)
    bounds = parts.offsets.tolist()
    return [values[bounds[i]:bounds[i + 1]] if parts.valid[i] else None
            for i in range(len(parts.lengths))]
