"""The MoE routing columns of a trajectory batch, built from per-sample arrays (read back by
`streamrl.schemas.routing_read`).

Writers store a routed row in `routed_experts_packed` (`streamrl.schemas.routing_pack`: each
(token, layer) top-k set as its combinatorial rank, bit-packed) with `moe_num_experts`, the expert
count the ranks are taken over. A row that is not a set in every (token, layer) (an id repeated:
no real router does that) or whose model has more than `MAX_EXPERTS` experts keeps the plain ids,
uint8 in `routed_experts` (<= 256 experts) or uint16 in `routed_experts_wide`, as every writer did
before the packed column existed; readers decode all three into the same [T, L, k] arrays.

Decoded packed rows hold each (token, layer)'s ids sorted ascending: the order within a top-k is
not stored (docs/routing-replay.md says why the trainer does not need it).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from streamrl.schemas.arrays import as_array, list_array
from streamrl.schemas.routing_pack import MAX_EXPERTS, pack_rows, packing, rank_sorted, sort_entries
from streamrl.schemas.trajectory import NARROW_EXPERT_LIMIT

_UINT16_MAX = (1 << 16) - 1  # the moe_num_experts column


def _plain(arr: npt.NDArray[Any], sample_id: str) -> tuple[npt.NDArray[Any], bool]:
    """(flattened ids, whether they go to the wide column): uint8 to narrow, uint16 to wide,
    other integer dtypes by value."""
    wide = arr.dtype == np.uint16 or (arr.dtype != np.uint8 and arr.size > 0
                                      and int(arr.max()) >= NARROW_EXPERT_LIMIT)
    dtype = np.uint16 if wide else np.uint8
    return as_array(arr, dtype, "routed_experts", sample_id).reshape(-1), wide


def _shaped(experts: Any, sample_id: str) -> npt.NDArray[Any]:
    arr = np.asarray(experts)
    if arr.ndim != 3:
        raise ValueError(f"sample {sample_id!r}: routed_experts must be 3-D "
                         f"[num_response_tokens, num_moe_layers, top_k], got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"sample {sample_id!r}: routed_experts must be integers, got dtype "
                         f"{arr.dtype}")
    return arr


def _num_experts(arrays: list[npt.NDArray[Any] | None], given: Sequence[int | None],
                 ids: Sequence[str]) -> list[int | None]:
    """Each routed row's expert count: the sample's own, else the smallest count that holds every
    id of the batch's rows of that top-k (a record only has to be decodable, and is)."""
    inferred: dict[int, int] = {}
    for arr, num in zip(arrays, given, strict=True):
        if arr is not None and num is None and arr.size:
            k = arr.shape[2]
            inferred[k] = max(inferred.get(k, k), int(arr.max()) + 1)
    out: list[int | None] = []
    for arr, num, sample_id in zip(arrays, given, ids, strict=True):
        if arr is None:
            out.append(num)
            continue
        if num is not None and not arr.shape[2] <= num <= _UINT16_MAX:
            raise ValueError(f"sample {sample_id!r}: moe_num_experts {num} must be >= top_k "
                             f"{arr.shape[2]} and <= {_UINT16_MAX}")
        low, high = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if low < 0 or (num is not None and high >= num):
            raise ValueError(f"sample {sample_id!r}: routed expert ids must lie in [0, "
                             f"moe_num_experts = {num}), got [{low}, {high}]")
        out.append(num if num is not None else inferred.get(arr.shape[2], arr.shape[2]))
    return out


def routing_columns(experts: Sequence[Any | None], num_experts: Sequence[int | None],
                    ids: Sequence[str]) -> dict[str, pa.Array]:
    """The six routing columns for rows with routing [T, L, k] (or None) and expert counts."""
    if all(e is None for e in experts) and all(n is None for n in num_experts):
        return _dense(len(experts))
    arrays = [None if e is None else _shaped(e, s) for e, s in zip(experts, ids, strict=True)]
    counts = _num_experts(arrays, num_experts, ids)
    packed: list[tuple[int, int] | None] = [None] * len(arrays)  # (E, k) of packed rows
    by_shape: dict[tuple[int, int], list[int]] = {}
    for row, (arr, num) in enumerate(zip(arrays, counts, strict=True)):
        if arr is not None and num is not None and arr.shape[2] <= num <= MAX_EXPERTS:
            by_shape.setdefault((num, arr.shape[2]), []).append(row)
    blobs: list[npt.NDArray[np.uint8] | None] = [None] * len(arrays)
    for (num, k), rows in by_shape.items():
        for row, blob in zip(rows, _pack(num, k, [arrays[r] for r in rows]), strict=True):
            if blob is not None:
                blobs[row], packed[row] = blob, (num, k)
    plain = [None if a is None or packed[i] else _plain(a, ids[i]) for i, a in enumerate(arrays)]
    shapes = [None if a is None else a.shape for a in arrays]
    return {
        "moe_num_layers": pa.array([None if s is None else s[1] for s in shapes], pa.uint16()),
        "moe_top_k": pa.array([None if s is None else s[2] for s in shapes], pa.uint8()),
        "moe_num_experts": pa.array([p[0] if p else (n if a is not None else None) for p, n, a
                                     in zip(packed, num_experts, arrays, strict=True)],
                                    pa.uint16()),
        "routed_experts": list_array([p[0] if p and not p[1] else None for p in plain],
                                     np.uint8, "routed_experts", ids),
        "routed_experts_wide": list_array([p[0] if p and p[1] else None for p in plain],
                                          np.uint16, "routed_experts_wide", ids),
        "routed_experts_packed": list_array(blobs, np.uint8, "routed_experts_packed", ids),
    }


@lru_cache(maxsize=8)
def _dense(num_rows: int) -> dict[str, pa.Array]:
    """The routing columns of a batch without routing: all null (immutable, so shared)."""
    return {name: pa.nulls(num_rows, type_) for name, type_ in (
        ("moe_num_layers", pa.uint16()), ("moe_top_k", pa.uint8()),
        ("moe_num_experts", pa.uint16()), ("routed_experts", pa.list_(pa.uint8())),
        ("routed_experts_wide", pa.list_(pa.uint16())),
        ("routed_experts_packed", pa.list_(pa.uint8())))}


def _pack(num: int, k: int, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[np.uint8] | None]:
    """Packed bytes per row (None for a row with a repeated id), all rows ranked in one pass."""
    p = packing(num, k)
    entries = np.array([a.shape[0] * a.shape[1] for a in arrays], np.int64)
    ordered, repeats = sort_entries(np.concatenate([a.reshape(-1, k) for a in arrays]))
    if np.count_nonzero(repeats):
        seen = np.concatenate(([0], np.cumsum(repeats)))[np.concatenate(([0], np.cumsum(entries)))]
        ok = seen[1:] == seen[:-1]  # no repeated id in the row
    else:
        ok = np.ones(len(arrays), np.bool_)
    if not ok.any():
        return [None] * len(arrays)
    keep = np.repeat(ok, entries)
    data, offsets = pack_rows(rank_sorted(ordered if keep.all() else ordered[keep], p),
                              entries[ok], p)
    out: list[npt.NDArray[np.uint8] | None] = [None] * len(arrays)
    for i, row in enumerate(np.flatnonzero(ok)):
        out[row] = data[offsets[i]:offsets[i + 1]]
    return out
