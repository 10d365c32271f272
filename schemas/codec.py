"""Trajectory bytes on the wire: one Arrow IPC stream holding exactly one record batch.

`encode_trajectories` is the producer's last gate: it refuses a batch that a v1 reader could not
read (`SchemaIncompatibleError`) or would reject (`TrajectoryDecodeError`), before anything is
published. `decode_trajectories` treats its input as hostile: size caps and a framing scan run
before pyarrow materializes arrays, then schema checks, full Arrow validation and the semantic
checks. It returns a batch with exactly the v1 schema, or raises a `DecodeError` subclass; no
other exception type escapes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

from streamrl.schemas.checks import check_batch, check_columns
from streamrl.schemas.compat import check_compatible, conform, conform_columns, has_v1_columns
from streamrl.schemas.errors import DecodeError, TrajectoryDecodeError
from streamrl.schemas.integrity import check_payload_digest
from streamrl.schemas.ipc_scan import scan_stream
from streamrl.schemas.limits import DEFAULT_LIMITS, DecodeLimits
from streamrl.schemas.trajectory import (
    LIST_SHAPES,
    META_SHAPE,
    TRAJECTORY_FIELDS,
    TRAJECTORY_SCHEMA,
)

_READ_OPTIONS = pa.ipc.IpcReadOptions(use_threads=False)
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression=None)  # readers reject compressed bodies
_V1_METADATA = TRAJECTORY_SCHEMA.metadata or {}
_V1_METADATA_ITEMS = list(_V1_METADATA.items())
_V1_NAMES = tuple(f.name for f in TRAJECTORY_FIELDS)
# Schema messages (flatbuffer bytes) that passed `check_compatible`, newest first. A stream repeats
# one schema in every message and equal bytes are an equal schema, so the schema is checked once
# per distinct message. A memo: it changes no result, only what a repeated decode costs.
_KNOWN_SCHEMA_MESSAGES = 8
_known_schema_messages: tuple[bytes, ...] = ()


@contextmanager
def _stage(where: str, reason_code: str) -> Iterator[None]:
    """Turn any non-contract exception raised inside into a `TrajectoryDecodeError`."""
    try:
        yield
    except DecodeError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, IndexError, MemoryError, ...
        detail = f"{type(exc).__name__}: {exc}"
        raise TrajectoryDecodeError(detail[:500], where=where, reason_code=reason_code) from exc


def encode_trajectories(batch: pa.RecordBatch, *, validate: bool = True,
                        limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """Encode one record batch as an Arrow IPC stream, stamped with the v1 schema marker.

    Raises `SchemaIncompatibleError` when the schema breaks v1 (changed type, missing or renamed
    required column, another major version, extension types) and, with `validate` (the default),
    `TrajectoryDecodeError` for the first row a reader would reject. Unknown extra columns are
    written as they are: they are a newer writer's optional columns.
    """
    if not isinstance(batch, pa.RecordBatch):
        raise TypeError(f"encode_trajectories takes a pyarrow.RecordBatch, got {type(batch)!r}")
    check_compatible(batch.schema, require_marker=False)
    existing = batch.schema.metadata or {}
    # A batch from `samples_to_batch` already has exactly the v1 schema: stamping it again would
    # only build an equal schema object (and lose Arrow's cached comparisons of this one).
    if not (list(existing.items()) == _V1_METADATA_ITEMS
            and batch.schema.equals(TRAJECTORY_SCHEMA, check_metadata=True)):
        batch = _stamped(batch, {**existing, **_V1_METADATA})
    if validate:
        check_batch(batch if has_v1_columns(batch.schema) else conform(batch), limits=limits)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=_WRITE_OPTIONS) as writer:
        writer.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    if len(data) > limits.max_message_bytes:
        raise TrajectoryDecodeError(
            f"encoded batch is {len(data)} bytes, readers accept at most "
            f"{limits.max_message_bytes}; split it into smaller batches", where="IPC stream",
            reason_code="too_large")
    return data


def _stamped(batch: pa.RecordBatch, metadata: dict[bytes, bytes]) -> pa.RecordBatch:
    """`batch` with the v1 schema marker and each known list column's shape (`LIST_SHAPES`) in
    its field metadata, so a hand-built batch is written as `samples_to_batch` writes one."""
    fields = [f.with_metadata({**(f.metadata or {}), META_SHAPE: LIST_SHAPES[f.name].encode()})
              if f.name in LIST_SHAPES else f for f in batch.schema]
    return pa.RecordBatch.from_arrays(batch.columns, schema=pa.schema(fields, metadata=metadata))


def decode_trajectories(data: bytes | bytearray | memoryview, *, vocab_size: int | None = None,
                        limits: DecodeLimits = DEFAULT_LIMITS,
                        digest: bytes | None = None) -> pa.RecordBatch:
    """Decode untrusted bytes into a batch with exactly `TRAJECTORY_SCHEMA`.

    Unknown columns are dropped and optional columns missing from an older writer are null-filled.
    With `vocab_size`, token ids must also be < vocab_size. With `digest` (the record's
    `streamrl-digest` header, `schemas/integrity.py`) the bytes must hash to it, checked before
    anything is decoded (`digest_mismatch`). Raises `TrajectoryDecodeError` or
    `SchemaIncompatibleError` (both `DecodeError`) for anything else.
    """
    if vocab_size is not None and vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TrajectoryDecodeError(f"expected bytes, got {type(data).__name__}",
                                    where="message", reason_code="not_bytes")
    with _stage("message", "malformed_ipc"):
        size = memoryview(data).nbytes
    if size > limits.max_message_bytes:
        raise TrajectoryDecodeError(f"message is {size} bytes, limit {limits.max_message_bytes}",
                                    where="message", reason_code="too_large")
    check_payload_digest(data, digest)
    with _stage("IPC stream", "malformed_ipc"):
        buf = pa.py_buffer(data)
        schema_message = scan_stream(buf, limits)
        reader = pa.ipc.open_stream(buf, options=_READ_OPTIONS)
        _check_stream_schema(schema_message, reader.schema)
        batch = reader.read_next_batch()
    with _stage("record batch", "invalid_arrow"):
        batch.validate(full=True)
    # Arrow-valid input cannot make the checks below raise anything but DecodeError; if it does,
    # that is a bug here, surfaced under its own code rather than blamed on the bytes.
    with _stage("record batch", "check_error"):
        columns = conform_columns(batch)
        batch = pa.RecordBatch.from_arrays(columns, schema=TRAJECTORY_SCHEMA)  # = conform(batch)
        check_columns(dict(zip(_V1_NAMES, columns, strict=True)), vocab_size=vocab_size,
                      limits=limits)
    return batch


def _check_stream_schema(schema_message: bytes, schema: pa.Schema) -> None:
    """`check_compatible(schema, require_marker=True)` for a schema read from `schema_message`,
    skipped when the same message bytes passed before (comparing them is cheaper than comparing
    schemas that Arrow has not fingerprinted yet)."""
    global _known_schema_messages
    known = _known_schema_messages
    if schema_message not in known:
        check_compatible(schema, require_marker=True)
        # One assignment: a concurrent decode sees the old or the new memo, never a torn one.
        _known_schema_messages = (schema_message, *known[:_KNOWN_SCHEMA_MESSAGES - 1])
