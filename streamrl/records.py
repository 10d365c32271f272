"""Decoding a record by the kind of stream it came from (used by `tail`, `inspect` and audit),
and trajectory records checked against their producer's digest header (every reader)."""

from __future__ import annotations

import pyarrow as pa

from streamrl.log import Record
from streamrl.schemas import Event, decode_event, decode_trajectories
from streamrl.schemas.integrity import header_digest
from streamrl.streams import StreamKind, parse_stream


def decode_record(record: Record, vocab_size: int | None = None) -> pa.RecordBatch | Event:
    """An Arrow batch for trajectories, a typed event otherwise; raises `DecodeError`."""
    _, kind = parse_stream(record.stream)
    if kind is StreamKind.TRAJECTORIES:
        return decode_trajectory_record(record, vocab_size=vocab_size)
    return decode_event(record.value, kind.value)


def decode_trajectory_record(record: Record, *, vocab_size: int | None = None) -> pa.RecordBatch:
    """`decode_trajectories` of the record's value, first checked against its `streamrl-digest`
    header (`digest_mismatch` when the bytes changed after the producer wrote them; a record
    without the header, from an older writer, is not checked). Raises `DecodeError`."""
    return decode_trajectories(record.value, vocab_size=vocab_size,
                               digest=header_digest(record.headers))
