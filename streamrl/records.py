"""Decoding a record by the kind of stream it came from (used by `tail`, `inspect` and audit)."""

from __future__ import annotations

import pyarrow as pa

from streamrl.log import Record
from streamrl.schemas import Event, decode_event, decode_trajectories
from streamrl.streams import StreamKind, parse_stream


def decode_record(record: Record, vocab_size: int | None = None) -> pa.RecordBatch | Event:
    """An Arrow batch for trajectories, a typed event otherwise; raises `DecodeError`."""
    _, kind = parse_stream(record.stream)
    if kind is StreamKind.TRAJECTORIES:
        return decode_trajectories(record.value, vocab_size=vocab_size)
    return decode_event(record.value, kind.value)
