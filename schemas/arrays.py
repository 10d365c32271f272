"""numpy <-> Arrow list columns without per-element Python loops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

_INT32_MAX = (1 << 31) - 1


class ListParts:
    """A list column as numpy: offsets rebased to 0, values, per-row lengths and validity."""

    def __init__(self, column: pa.ListArray) -> None:
        # A zero-row list may legally have an empty offsets buffer.
        raw = column.offsets.to_numpy().astype(np.int64) if len(column) else np.zeros(1, np.int64)
        self.values: pa.Array = column.values.slice(int(raw[0]), int(raw[-1] - raw[0]))
        self.offsets = raw - raw[0]
        self.lengths = np.diff(self.offsets)
        self.valid = ~column.is_null().to_numpy(zero_copy_only=False)


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
    """One list<dtype> column from per-row arrays (flattened C-order); None rows are null."""
    flat = [None if row is None else as_array(row, dtype, name, sid).reshape(-1)
            for row, sid in zip(rows, sample_ids, strict=True)]
    lengths = np.fromiter((0 if a is None else a.size for a in flat), np.int64, count=len(flat))
    offsets = np.zeros(len(flat) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _INT32_MAX:
        raise ValueError(f"{name}: {offsets[-1]} values in one batch overflow int32 list "
                         "offsets; split the batch")
    present = [a for a in flat if a is not None]
    values = np.concatenate(present) if present else np.empty(0, dtype)
    nulls = np.fromiter((a is None for a in flat), np.bool_, count=len(flat))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values),
                                    mask=pa.array(nulls) if nulls.any() else None)


def list_views(column: pa.ListArray) -> list[npt.NDArray[Any] | None]:
    """Per-row numpy views of a list column (zero-copy for numeric values; None for null rows)."""
    parts = ListParts(column)
    values = parts.values.to_numpy(zero_copy_only=False)
    bounds = parts.offsets.tolist()
    return [values[bounds[i]:bounds[i + 1]] if parts.valid[i] else None
            for i in range(len(parts.lengths))]
