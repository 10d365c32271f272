"""Reading the MoE routing columns: check packed rows (untrusted bytes) and decode every row.

Work is bounded by the message, not by what it claims: a batch may use at most
`MAX_ROUTING_SHAPES` distinct (moe_num_experts, moe_top_k) pairs (each needs its own tables), its
packed rows at most `limits.max_message_bytes` ids in all (what the plain uint8 form of the largest
accepted message would hold), and rows are unpacked in pieces of `_PIECE` entries, so
intermediates stay a few tens of MB however long a row is.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from streamrl.schemas.arrays import ListParts, filled_ints, list_views
from streamrl.schemas.limits import DecodeLimits
from streamrl.schemas.routing_pack import (
    MAX_EXPERTS,
    Packing,
    bad_ranks,
    packing,
    unpack_rows,
    unrank_sets,
)
from streamrl.schemas.trajectory import NARROW_EXPERT_LIMIT

Routing = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]
Problem = tuple[str, str, str]  # (what, where, reason_code)
MAX_ROUTING_SHAPES = 16
_PIECE = 1 << 20  # entries unpacked at once; a multiple of 8, so pieces start on a byte
_NAME = "'routed_experts_packed'"


Pieces = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64],
               npt.NDArray[np.int64]]


def _block(block: list[tuple[int, int, int, int]]) -> Pieces:
    starts, counts, index, first = (np.array(c, np.int64) for c in zip(*block, strict=True))
    return starts, counts, index, first


def _pieces(starts: npt.NDArray[np.int64], entries: npt.NDArray[np.int64], p: Packing
            ) -> Iterator[Pieces]:
    """Blocks of at most ~_PIECE entries: (byte starts, entries, row index into `starts`,
    first entry within the row) of each piece; a long row is cut every _PIECE entries, where
    its bits start on a byte (_PIECE * bits is a multiple of 8)."""
    block: list[tuple[int, int, int, int]] = []
    size = 0
    for i, (start, n) in enumerate(zip(starts.tolist(), entries.tolist(), strict=True)):
        for first in range(0, max(n, 1), _PIECE):
            count = min(_PIECE, n - first)
            block.append((start + first * p.bits_per_entry // 8, count, i, first))
            size += count
            if size >= _PIECE:
                yield _block(block)
                block, size = [], 0
    if block:
        yield _block(block)


def check_packed(num_experts: pa.Array, parts: ListParts, num_tokens: npt.NDArray[np.int64],
                 num_layers: npt.NDArray[np.int64], num_top_k: npt.NDArray[np.int64],
                 limits: DecodeLimits) -> Problem | None:
    """The first bad `routed_experts_packed` row, else None: a missing or impossible (E, k), too
    many shapes or ids, a byte count other than the shape needs, a rank no set has.
    `num_layers` and `num_top_k`: the batch's columns as int64 (nulls 0), already made."""
    rows = np.flatnonzero(parts.valid)
    experts = filled_ints(num_experts)[rows]
    top_k = num_top_k[rows]
    layers = num_layers[rows]
    bad = np.flatnonzero(experts == 0)
    if bad.size:
        return ("routed_experts_packed needs moe_num_experts",
                f"row {rows[bad[0]]}, column 'moe_num_experts'", "missing_moe_shape")
    bad = np.flatnonzero((top_k > experts) | (experts > MAX_EXPERTS))
    if bad.size:
        i = bad[0]
        return (f"moe_top_k {top_k[i]} and moe_num_experts {experts[i]} must satisfy 1 <= "
                f"moe_top_k <= moe_num_experts <= {MAX_EXPERTS} to decode packed routing",
                f"row {rows[i]}, column 'moe_num_experts'", "bad_moe_shape")
    shapes = sorted({(int(e), int(t)) for e, t in zip(experts, top_k, strict=True)})
    if len(shapes) > MAX_ROUTING_SHAPES:
        return (f"{len(shapes)} (moe_num_experts, moe_top_k) pairs in one batch, at most "
                f"{MAX_ROUTING_SHAPES}", f"column {_NAME}", "too_many_moe_shapes")
    entries = num_tokens[rows] * layers
    ids = np.cumsum(entries * top_k)
    row = int(np.searchsorted(ids, limits.max_message_bytes, side="right"))
    if row < len(rows):
        return (f"packed routing decodes to more than {limits.max_message_bytes} expert ids",
                f"row {rows[row]}, column {_NAME}", "too_large")
    data = parts.values.to_numpy(zero_copy_only=False)
    for num, k in shapes:
        sel = (experts == num) & (top_k == k)
        problem = _check_group(data, parts, rows[sel], entries[sel], layers[sel], packing(num, k))
        if problem is not None:
            return problem
    return None


def _check_group(data: npt.NDArray[np.uint8], parts: ListParts, group: npt.NDArray[np.int64],
                 entries: npt.NDArray[np.int64], layers: npt.NDArray[np.int64], p: Packing
                 ) -> Problem | None:
    expected = p.row_bytes(entries)
    wrong = np.flatnonzero(parts.lengths[group] != expected)
    if wrong.size:
        i = wrong[0]
        return (f"{parts.lengths[group[i]]} packed bytes, expected {expected[i]} for "
                f"{entries[i]} (token, layer) entries of {p.bits_per_entry} bits",
                f"row {group[i]}, column {_NAME}", "routing_shape_mismatch")
    for starts, counts, index, first in _pieces(parts.offsets[group], entries, p):
        bad = np.flatnonzero(bad_ranks(unpack_rows(data, starts, counts, p), p))
        if bad.size:
            piece = int(np.searchsorted(np.cumsum(counts), bad[0], side="right"))
            entry = int(first[piece] + bad[0] - (counts[:piece].sum()))
            i, per_token = int(index[piece]), int(layers[index[piece]])
            return (f"packed routing rank is not a set of {p.top_k} out of {p.num_experts} "
                    f"experts", f"row {group[i]}, column {_NAME}, token {entry // per_token}, "
                    f"layer {entry % per_token}", "routing_out_of_range")
    return None


def routing_arrays(columns: dict[str, pa.Array], num_tokens: npt.NDArray[np.int64]
                   ) -> list[Routing | None]:
    """Per row, routing as [T, L, k] (None when not recorded) from a checked batch's columns:
    plain rows as zero-copy views, packed rows decoded (ids ascending within each top-k)."""
    layers, top_k = filled_ints(columns["moe_num_layers"]), filled_ints(columns["moe_top_k"])
    flat = list_views(columns["routed_experts"])
    for row, view in enumerate(list_views(columns["routed_experts_wide"])):
        if view is not None:
            flat[row] = view
    out: list[Routing | None] = [
        None if f is None or not layers[i] or not top_k[i] else f.reshape(-1, layers[i], top_k[i])
        for i, f in enumerate(flat)]
    parts = ListParts(columns["routed_experts_packed"])
    if not parts.num_valid:
        return out
    experts = filled_ints(columns["moe_num_experts"])
    data = parts.values.to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(parts.valid)
    for num, k in sorted({(int(experts[r]), int(top_k[r])) for r in rows}):
        group = rows[(experts[rows] == num) & (top_k[rows] == k)]
        dtype = np.uint8 if num <= NARROW_EXPERT_LIMIT else np.uint16
        decoded = [np.empty((int(num_tokens[r]) * int(layers[r]), k), dtype) for r in group]
        p = packing(num, k)
        for starts, counts, index, first in _pieces(parts.offsets[group],
                                                     num_tokens[group] * layers[group], p):
            ids = unrank_sets(unpack_rows(data, starts, counts, p), p)
            at = 0
            for n, i, f in zip(counts.tolist(), index.tolist(), first.tolist(), strict=True):
                decoded[i][f:f + n] = ids[at:at + n]
                at += n
        for i, row in enumerate(group):
            out[row] = decoded[i].reshape(-1, int(layers[row]), k)
    return out
