"""Compact MoE routing: each (token, layer) top-k *set* stored as its combinatorial rank, packed.

Why a set: the trainer forces the recorded experts and takes each one's gate weight from its own
router probabilities gathered at the id (`streamrl/models/moe.py`, megatron-core's RouterReplay),
so which experts were chosen matters and their order within the top-k does not (up to the order
of a float sum over k). A sorted k-subset of E experts has C(E, k) values, so its rank in the
combinatorial number system takes ceil(log2 C(E, k)) bits: 54 for Kimi-K2 (E=384, k=8) where
SGLang's int32 takes 256 and one uint16 per id 128. Keeping the order as well cannot reach 4x
there: the ordered draws need log2(384!/376!) = 68.6 bits (3.7x).

Layout of one row (`routed_experts_packed`, list<uint8>): the entries [num_response_tokens,
moe_num_layers] in C order, each `Packing.bits_per_entry` bits, bit j of the row at bit j % 8 of
byte j // 8 (LSB first), the last byte zero-padded. An entry is the ids sorted ascending, cut into
`group_sizes` consecutive runs; each run is stored as its rank, sum over its ids c_1 < ... < c_s
of C(c_i, i), in `field_bits` bits. One run unless C(E, k) >= 2**64 (E=512, k=10 or E=1024, k=8):
then runs whose ranks fit uint64, which costs a few bits (the runs' relative order is implied but
not exploited).

Everything is vectorized numpy over all entries (a sorting network, table gathers, one searchsorted
per id on decode); no Python loop runs per entry.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from itertools import pairwise
from math import comb

import numpy as np
import numpy.typing as npt

from streamrl.schemas import bitpack

_U64_LIMIT = 1 << 64
MAX_EXPERTS = 4096  # caps the tables a hostile record can make a reader build (~0.1 s)
_NETWORK_MAX_K = 32  # above this, np.sort beats the comparator network
_CHUNK = 1 << 14  # entries per decode step: the working set stays in cache


class Packing:
    """How sets of `top_k` ids out of `num_experts` are stored; build with `packing(E, k)`."""

    def __init__(self, num_experts: int, top_k: int) -> None:
        self.num_experts, self.top_k = num_experts, top_k
        num_runs = 1
        while comb(num_experts, -(-top_k // num_runs)) >= _U64_LIMIT:  # ceil(k / runs) per run
            num_runs += 1
        base, extra = divmod(top_k, num_runs)
        self.group_sizes = tuple(base + (j < extra) for j in range(num_runs))
        self.counts = tuple(comb(num_experts, s) for s in self.group_sizes)  # ranks < count
        self.field_bits = tuple((c - 1).bit_length() for c in self.counts)
        self.bits_per_entry = sum(self.field_bits)

    @cached_property
    def tables(self) -> dict[int, npt.NDArray[np.uint64]]:
        """Per run size, the binomial table; built on first use (checking a record's bytes and
        ranks needs only the counts above, so a reader never builds one for data it refuses)."""
        return {s: _table(self.num_experts, s) for s in set(self.group_sizes)}

    @cached_property
    def lookups(self) -> dict[int, dict[int, tuple[int, npt.NDArray[np.int64], int]]]:
        """lookups[size][i]: how the decoder finds the i-th smallest id of a run of `size`."""
        return {s: {i: _lookup(self.tables[s][i], comb(self.num_experts, s))
                    for i in range(2, s + 1)} for s in set(self.group_sizes)}

    def row_bytes(self, num_entries: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Bytes of a row holding `num_entries` (token, layer) entries."""
        return (num_entries * self.bits_per_entry + 7) // 8


def _table(num_experts: int, size: int) -> npt.NDArray[np.uint64]:
    """[size + 1, num_experts + 1]: C(c, i), clamped at C(num_experts, size) so it fits uint64.
    Clamped entries are never a valid set's term (each term is <= the rank < the clamp)."""
    limit = comb(num_experts, size)
    rows = [np.ones(num_experts + 1, object)]  # C(c, 0) = 1
    for _ in range(size):  # C(c, i) = sum over j < c of C(j, i - 1), on Python ints
        row = np.zeros(num_experts + 1, object)
        row[1:] = np.cumsum(rows[-1][:-1])
        rows.append(np.minimum(row, limit))
    return np.array(rows).astype(np.uint64)


@lru_cache(maxsize=32)
def packing(num_experts: int, top_k: int) -> Packing:
    """The packing for (E, k) (cached); ValueError unless 1 <= k <= E <= MAX_EXPERTS."""
    if not 1 <= top_k <= num_experts <= MAX_EXPERTS:
        raise ValueError(f"moe_top_k {top_k} and moe_num_experts {num_experts} must satisfy "
                         f"1 <= moe_top_k <= moe_num_experts <= {MAX_EXPERTS}")
    return Packing(num_experts, top_k)


@lru_cache(maxsize=16)
def _network(k: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort comparators for k inputs (pairs past k dropped: padding
    with +inf at the end never moves)."""
    n = 1 << max(k - 1, 0).bit_length()
    pairs = []
    p = 1
    while p < n:
        step = p
        while step >= 1:
            for j in range(step % p, n - step, 2 * step):
                for i in range(min(step, n - j - step)):
                    if (i + j) // (2 * p) == (i + j + step) // (2 * p):
                        pairs.append((i + j, i + j + step))
            step //= 2
        p *= 2
    return tuple((a, b) for a, b in pairs if b < k)


def _lookup(table: npt.NDArray[np.uint64], count: int
            ) -> tuple[int, npt.NDArray[np.int64], int]:
    """(q, lut, steps) that find max c with table[c] <= r for any r < count without a search.

    r's float64 bits shifted right by 52 - q (its exponent and top q mantissa bits: a monotone
    piecewise-linear log2) pick a bucket; `lut[bucket]` is the answer for the bucket's lowest r
    and `steps` comparisons `table[c + 1] <= r` climb the table entries inside a bucket. The
    bounds are widened by 2**-50 so that rounding r to float64 can never pick a bucket above r's.
    """
    valid = table[table < np.uint64(count)]
    for q in range(4, 17):
        num = ((max(count - 1, 1).bit_length() + 1) << q) + 1
        j = np.arange(1, num, dtype=np.int64)
        e, m = (j - 1) >> q, (j - 1) & ((1 << q) - 1)
        low = np.ldexp(1.0 + m / (1 << q), e) * (1 - 2.0**-50)
        high = np.ldexp(1.0 + (m + 1) / (1 << q), e) * (1 + 2.0**-50)
        low_int = np.floor(np.minimum(low, 2.0**64 - 4096)).astype(np.uint64)
        high_int = np.ceil(np.minimum(high, 2.0**64 - 4096)).astype(np.uint64)
        lut = np.concatenate(([np.searchsorted(table, 0, side="right") - 1],
                              np.searchsorted(table, low_int, side="right") - 1))
        inside = (np.searchsorted(valid, high_int, side="right")
                  - np.searchsorted(valid, low_int, side="right"))
        steps = int(inside.max(initial=0))
        if steps <= 1 or num > 1 << 20:
            return q, lut.astype(np.int64), steps
    raise AssertionError("unreachable: q = 16 always returns")


def rank_entries(ids: npt.NDArray[np.integer], p: Packing
                 ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """[N, k] ids in [0, E) -> ([N, num_runs] ranks, [N] True where an entry repeats an id and
    so is not a set: its ranks are meaningless)."""
    ordered, repeats = sort_entries(ids)
    return rank_sorted(ordered, p), repeats


def sort_entries(ids: npt.NDArray[np.integer]
                 ) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.bool_]]:
    """([N, k] ids sorted along k, [N] True where an entry repeats an id), in cache-sized
    chunks. Cheap next to ranking, so a writer finds the rows that are not sets first."""
    ordered = np.empty_like(ids)
    repeats = np.empty(len(ids), np.bool_)
    for lo in range(0, len(ids), _CHUNK):
        cols = sort_sets(ids[lo:lo + _CHUNK])
        repeats[lo:lo + _CHUNK] = has_repeats(cols)
        for j, col in enumerate(cols):
            ordered[lo:lo + _CHUNK, j] = col
    return ordered, repeats


def rank_sorted(ordered: npt.NDArray[np.integer], p: Packing) -> npt.NDArray[np.uint64]:
    """[N, k] ascending distinct ids -> [N, num_runs] ranks, in cache-sized chunks."""
    ranks = np.empty((len(ordered), len(p.group_sizes)), np.uint64)
    for lo in range(0, len(ordered), _CHUNK):
        chunk = ordered[lo:lo + _CHUNK]
        ranks[lo:lo + _CHUNK] = rank_sets([chunk[:, j] for j in range(p.top_k)], p)
    return ranks


def sort_sets(ids: npt.NDArray[np.integer]) -> list[npt.NDArray[np.integer]]:
    """[N, k] ids -> k columns of the ids sorted ascending along k (a comparator network on
    columns for small k: several times faster than np.sort along a short axis)."""
    k = ids.shape[1]
    if k > _NETWORK_MAX_K:
        ordered = np.sort(ids.astype(np.int64), axis=1)
        return [np.ascontiguousarray(ordered[:, j]) for j in range(k)]
    cols = [np.ascontiguousarray(ids[:, j]) for j in range(k)]
    for a, b in _network(k):
        lo = np.minimum(cols[a], cols[b])
        np.maximum(cols[a], cols[b], out=cols[b])
        cols[a] = lo
    return cols


def has_repeats(cols: list[npt.NDArray[np.integer]]) -> npt.NDArray[np.bool_]:
    """[N] True where an entry names one expert twice (not a set: cannot be packed)."""
    out = np.zeros(len(cols[0]), np.bool_)
    for a, b in pairwise(cols):
        out |= a == b
    return out


def rank_sets(cols: list[npt.NDArray[np.integer]], p: Packing) -> npt.NDArray[np.uint64]:
    """k columns of ascending distinct ids in [0, E) -> [N, num_runs] ranks."""
    out = np.zeros((len(cols[0]), len(p.group_sizes)), np.uint64)
    start = 0
    for j, size in enumerate(p.group_sizes):
        table, rank = p.tables[size], np.zeros(len(cols[0]), np.uint64)
        for i in range(size):
            rank += table[i + 1].take(cols[start + i])  # take: ~2x fancy indexing
        out[:, j] = rank
        start += size
    return out


def unrank_sets(ranks: npt.NDArray[np.uint64], p: Packing) -> npt.NDArray[np.int64]:
    """[N, num_runs] ranks (each < its count) -> [N, k] ascending ids, in cache-sized chunks."""
    out = np.empty((len(ranks), p.top_k), np.int64)
    for lo in range(0, len(ranks), _CHUNK):
        _unrank(ranks[lo:lo + _CHUNK], p, out[lo:lo + _CHUNK])
    return out


def _unrank(ranks: npt.NDArray[np.uint64], p: Packing, out: npt.NDArray[np.int64]) -> None:
    start = 0
    for j, size in enumerate(p.group_sizes):
        table, rest = p.tables[size], ranks[:, j].copy()
        for i in range(size, 1, -1):  # the largest id first: the greedy colex unranking
            q, lut, steps = p.lookups[size][i]
            bucket = rest.astype(np.float64).view(np.int64) >> (52 - q)
            bucket -= (1023 << q) - 1
            np.maximum(bucket, 0, out=bucket)  # rest = 0; the top is in range by construction
            c = lut.take(bucket)
            above = table[i][1:]  # above[c] = table[i][c + 1]
            for _ in range(steps):
                c += above.take(c) <= rest
            rest -= table[i].take(c)
            out[:, start + i - 1] = c
        out[:, start] = rest  # C(c, 1) = c
        start += size


def pack_rows(ranks: npt.NDArray[np.uint64], entries_per_row: npt.NDArray[np.int64],
              p: Packing) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Bit-pack [N, num_runs] ranks, rows of `entries_per_row` entries each; returns (all rows'
    bytes concatenated, byte offsets [num_rows + 1]). Each row starts on a byte boundary."""
    return bitpack.pack_rows(ranks, p.field_bits, entries_per_row)


def unpack_rows(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
                entries_per_row: npt.NDArray[np.int64], p: Packing) -> npt.NDArray[np.uint64]:
    """The inverse of `pack_rows` for rows starting at byte `starts` of `data`: [N, num_runs]
    ranks. Each row must have its `p.row_bytes` bytes (checked by the caller)."""
    return bitpack.unpack_rows(data, starts, entries_per_row, p.field_bits)


def bad_ranks(ranks: npt.NDArray[np.uint64], p: Packing) -> npt.NDArray[np.bool_]:
    """[N] True where some run's rank is >= its count (bytes no encoder writes)."""
    bad = np.zeros(len(ranks), np.bool_)
    for j, count in enumerate(p.counts):
        if count < _U64_LIMIT:  # always, by construction; a rank >= 2**64 cannot be stored
            bad |= ranks[:, j] >= np.uint64(count)
    return bad
