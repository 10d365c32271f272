"""Pre-flight scan of an Arrow IPC stream's framing, before pyarrow materializes any array.

pyarrow validates what it reads, but two things cost memory before validation can run: compressed
bodies (a 30 KiB zstd body can declare gigabytes of output) and declared lengths. This scan walks
the stream's messages with pyarrow's `MessageReader` (which verifies each flatbuffer and slices
bodies zero-copy) and reads the few flatbuffer fields that matter with bounds-checked reads:
the message kind, record-batch row counts, field-node lengths and the body-compression flag.

Flatbuffer layout used here (format/Message.fbs): Message{0 version, 1 header_type, 2 header,
3 bodyLength}; RecordBatch{0 length, 1 nodes:[FieldNode{length, null_count}], 2 buffers,
3 compression}; DictionaryBatch{0 id, 1 data:RecordBatch, 2 isDelta}.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa

from streamrl.schemas.compat import EXTENSION_KEY
from streamrl.schemas.errors import SchemaIncompatibleError, TrajectoryDecodeError
from streamrl.schemas.limits import DecodeLimits

_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3
_FIELD_NODE_BYTES = 16


class _Table:
    """One flatbuffer table; every read is bounds-checked (IndexError when out of range)."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - _read(buf, "<i", pos)
        self.vtable_len = _read(buf, "<H", self.vtable)

    def _offset(self, index: int) -> int:
        slot = 4 + 2 * index
        return 0 if slot + 2 > self.vtable_len else _read(self.buf, "<H", self.vtable + slot)

    def scalar(self, index: int, fmt: str, default: int) -> int:
        off = self._offset(index)
        return default if off == 0 else _read(self.buf, fmt, self.pos + off)

    def has(self, index: int) -> bool:
        return self._offset(index) != 0

    def table(self, index: int) -> _Table | None:
        off = self._offset(index)
        if off == 0:
            return None
        at = self.pos + off
        return _Table(self.buf, at + _read(self.buf, "<I", at))

    def vector(self, index: int) -> tuple[int, int]:
        """(start of elements, element count); (0, 0) when absent."""
        off = self._offset(index)
        if off == 0:
            return 0, 0
        at = self.pos + off
        start = at + _read(self.buf, "<I", at)
        return start + 4, _read(self.buf, "<I", start)


_FORMATS = {fmt: struct.Struct(fmt) for fmt in ("<B", "<H", "<i", "<I", "<q")}


def _read(buf: bytes, fmt: str, pos: int) -> int:
    layout = _FORMATS[fmt]
    if pos < 0 or pos + layout.size > len(buf):
        raise IndexError(f"flatbuffer read at {pos} outside {len(buf)} bytes")
    value: int = layout.unpack_from(buf, pos)[0]
    return value


def _bad(what: str, where: str, code: str) -> TrajectoryDecodeError:
    return TrajectoryDecodeError(what, where=where, reason_code=code)


def _check_record_batch(rb: _Table, where: str, limits: DecodeLimits, max_values: int) -> int:
    """Check one RecordBatch table; return its declared row count."""
    if rb.has(3):
        raise _bad("compressed IPC bodies are not accepted", where, "compressed_body")
    rows = rb.scalar(0, "<q", 0)
    if not 0 <= rows <= limits.max_rows:
        raise _bad(f"declares {rows} rows, limit {limits.max_rows}", where, "too_many_rows")
    start, count = rb.vector(1)
    # All node lengths at once: the nodes that fit in the buffer, then the first that does not
    # fails exactly as a read of it would. The copy out of the flatbuffer is aligned (numpy is
    # slow on unaligned data); as uint64 a negative length is huge, so one comparison finds both.
    fit = min(count, max(0, (len(rb.buf) - start - 8) // _FIELD_NODE_BYTES + 1))
    nodes = rb.buf[start:start + fit * _FIELD_NODE_BYTES - 8] if fit else b""
    lengths = np.frombuffer(nodes, "<u8")[::2]
    if np.count_nonzero(lengths > max_values):
        i = int((lengths > max_values).argmax())
        raise _bad(f"field node {i} declares {lengths.view('<i8')[i]} values, limit "
                   f"{max_values}", where, "declared_length_too_large")
    if fit < count:
        _read(rb.buf, "<q", start + fit * _FIELD_NODE_BYTES)  # raises IndexError
    return rows


def scan_stream(buf: pa.Buffer, limits: DecodeLimits) -> bytes:
    """Raise a `DecodeError` subclass unless `buf` frames as: one schema, dictionary batches,
    exactly one uncompressed record batch, no extension types, declared lengths within limits.

    Returns the schema message's metadata (flatbuffer) bytes: equal bytes mean an equal schema, so
    callers can key per-schema work on them."""
    # No column can hold more values than the message has bits (bool is the densest type), so a
    # larger declared length is a lie whatever the type; null-typed columns are capped the same.
    max_values = min(8 * buf.size + 8, (1 << 31) - 1)
    reader = pa.ipc.MessageReader.open_stream(buf)
    num_batches = 0
    schema_message = b""
    for index in range(limits.max_ipc_messages + 1):
        where = f"IPC message {index}"
        try:
            message = reader.read_next_message()
        except StopIteration:
            break
        if index == limits.max_ipc_messages:
            raise _bad(f"more than {limits.max_ipc_messages} IPC messages", where,
                       "too_many_messages")
        meta = message.metadata.to_pybytes()
        if EXTENSION_KEY in meta:
            raise SchemaIncompatibleError("Arrow extension types are not accepted", where=where,
                                          reason_code="extension_type")
        root = _Table(meta, _read(meta, "<I", 0))
        kind = root.scalar(1, "<B", 0)
        if (kind == _SCHEMA) != (index == 0):
            raise _bad("the stream must start with exactly one schema message", where,
                       "unexpected_message")
        if kind == _SCHEMA:
            schema_message = meta
        elif kind == _RECORD_BATCH:
            num_batches += 1
            header = root.table(2)
            if header is None:
                raise _bad("record batch message without a header", where, "malformed_ipc")
            _check_record_batch(header, where, limits, max_values)
        elif kind == _DICTIONARY_BATCH:
            header = root.table(2)
            data = header.table(1) if header is not None else None
            if data is None:
                raise _bad("dictionary batch without data", where, "malformed_ipc")
            _check_record_batch(data, where, limits, max_values)
        else:
            raise _bad(f"unexpected IPC message kind {kind}", where, "unexpected_message")
    if num_batches != 1:
        raise _bad(f"expected exactly one record batch, found {num_batches}", "IPC stream",
                   "batch_count")
    return schema_message
