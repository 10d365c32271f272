"""Fixed-width bit fields packed back to back, one byte-aligned run per row, vectorized.

An entry is `len(widths)` unsigned fields (each <= 64 bits) of B = sum(widths) bits; a row's
entries follow each other with no gap, bit j of the row at bit j % 8 of byte j // 8 (LSB first),
the last byte zero-padded: a row of n entries takes ceil(n * B / 8) bytes.

Why chunks of 8: eight entries are exactly B bytes, so every entry of a chunk sits at the same bit
offset in every chunk. Packing is then a few column operations with constant shifts over
[num_chunks] arrays (no scatter, no per-entry offsets); rows are padded with zero entries to whole
chunks and cut back to their byte count.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_U64 = np.dtype("<u8")


def _layout(widths: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """(entry in chunk, field, word, shift) of every non-empty field of a chunk."""
    bits, out = sum(widths), []
    for t in range(8):
        at = t * bits
        for j, width in enumerate(widths):
            if width:
                out.append((t, j, at >> 6, at & 63))
            at += width
    return out


def _chunks(entries_per_row: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], int]:
    """(first chunk of each row, total chunks)."""
    per_row = (entries_per_row + 7) // 8
    return np.cumsum(per_row) - per_row, int(per_row.sum())


def _padded_index(entries_per_row: npt.NDArray[np.int64], first_chunk: npt.NDArray[np.int64]
                  ) -> npt.NDArray[np.int64] | None:
    """Where each entry lands when rows are padded to whole chunks (None: nowhere else)."""
    if not np.count_nonzero(entries_per_row[:-1] % 8):
        return None  # every row but the last fills its chunks: the layout is already padded
    first_entry = np.cumsum(entries_per_row) - entries_per_row
    shift = np.repeat(first_chunk * 8 - first_entry, entries_per_row)
    return np.arange(int(entries_per_row.sum()), dtype=np.int64) + shift


def pack_rows(values: npt.NDArray[np.uint64], widths: tuple[int, ...],
              entries_per_row: npt.NDArray[np.int64]
              ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """[N, len(widths)] field values (each < 2**width) -> (rows' bytes concatenated, byte
    offsets [num_rows + 1])."""
    bits = sum(widths)
    sizes = (entries_per_row * bits + 7) // 8
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    if not bits:
        return np.zeros(0, np.uint8), offsets
    first_chunk, num_chunks = _chunks(entries_per_row)
    index = _padded_index(entries_per_row, first_chunk)
    padded = np.zeros((num_chunks * 8, len(widths)), np.uint64)
    if index is None:
        padded[: len(values)] = values
    else:
        padded[index] = values
    entries = padded.reshape(num_chunks, 8, len(widths))
    words = np.zeros((num_chunks, -(-bits // 8) + 1), _U64)
    for t, j, word, shift in _layout(widths):
        value = entries[:, t, j]
        words[:, word] |= value << np.uint64(shift)
        if shift + widths[j] > 64:
            words[:, word + 1] |= value >> np.uint64(64 - shift)
    chunk_bytes = words.view(np.uint8)[:, :bits].reshape(-1)
    starts = first_chunk * bits
    data = np.concatenate([chunk_bytes[s:s + n] for s, n in zip(
        starts.tolist(), sizes.tolist(), strict=True)]) if len(sizes) else np.zeros(0, np.uint8)
    return data, offsets


def unpack_rows(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
                entries_per_row: npt.NDArray[np.int64], widths: tuple[int, ...]
                ) -> npt.NDArray[np.uint64]:
    """The inverse of `pack_rows` for rows at byte `starts` of `data`, each of exactly
    ceil(entries * B / 8) bytes (the caller checks): [N, len(widths)] field values."""
    bits = sum(widths)
    total = int(entries_per_row.sum())
    if not bits:
        return np.zeros((total, len(widths)), np.uint64)
    first_chunk, num_chunks = _chunks(entries_per_row)
    sizes = (entries_per_row * bits + 7) // 8
    flat = np.zeros(num_chunks * bits, np.uint8)
    for s, n, to in zip(starts.tolist(), sizes.tolist(), (first_chunk * bits).tolist(),
                        strict=True):
        flat[to:to + n] = data[s:s + n]
    buffer = np.zeros((num_chunks, 8 * (-(-bits // 8) + 1)), np.uint8)
    buffer[:, :bits] = flat.reshape(num_chunks, bits)
    words = buffer.view(_U64)
    out = np.zeros((num_chunks, 8, len(widths)), np.uint64)
    for t, j, word, shift in _layout(widths):
        value = words[:, word] >> np.uint64(shift)
        if shift + widths[j] > 64:
            value |= words[:, word + 1] << np.uint64(64 - shift)
        out[:, t, j] = value & (np.uint64((1 << 64) - 1) >> np.uint64(64 - widths[j]))
    out = out.reshape(-1, len(widths))
    index = _padded_index(entries_per_row, first_chunk)
    return out[:total] if index is None else out[index]
