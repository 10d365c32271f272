"""Turning decoded records into table rows people can read (`tail`, `inspect`)."""

from __future__ import annotations

import datetime as dt

import msgspec
import pyarrow as pa
from rich.table import Table

from streamrl.log import Record
from streamrl.records import decode_record
from streamrl.schemas import DecodeError, Event

_COMMON = {"run_id", "event_id", "time_ms"}


def _short(value: object, limit: int = 60) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_summary(event: Event) -> str:
    fields = msgspec.structs.asdict(event)
    return "  ".join(f"{k}={_short(v)}" for k, v in fields.items() if k not in _COMMON)


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def trajectory_rows(record: Record, batch: pa.RecordBatch) -> list[list[str]]:
    cols = {name: batch[name].to_pylist() for name in
            ("sample_id", "producer_id", "policy_version", "reward", "finish_reason")}
    versions = batch["response_versions"].to_pylist()
    prompt_len = [len(t) for t in batch["prompt_tokens"].to_pylist()]
    resp_len = [len(t) for t in batch["response_tokens"].to_pylist()]
    rows = []
    for i in range(batch.num_rows):
        v = versions[i] or [cols["policy_version"][i]]
        span = f"{min(v)}-{max(v)}" if min(v) != max(v) else str(v[0])
        rows.append([
            f"{record.partition}:{record.offset}", "trajectory", _time(record.timestamp_ms),
            f"sample={cols['sample_id'][i]}  producer={cols['producer_id'][i]}  "
            f"versions={span}  tokens={prompt_len[i]}+{resp_len[i]}  "
            f"reward={cols['reward'][i]:.3g}  finish={cols['finish_reason'][i]}",
        ])
    return rows


def record_rows(record: Record) -> list[list[str]]:
    """Rows for one record; a record that breaks the contract shows as REJECTED with why."""
    where = f"{record.partition}:{record.offset}"
    try:
        decoded = decode_record(record)
    except DecodeError as error:
        return [[where, "[red]REJECTED[/red]", _time(record.timestamp_ms), _short(str(error), 200)]]
    if isinstance(decoded, pa.RecordBatch):
        return trajectory_rows(record, decoded)
    tag = type(decoded).__struct_config__.tag
    return [[where, str(tag), _time(record.timestamp_ms), event_summary(decoded)]]


def records_table(title: str, records: list[Record]) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for name in ("at", "type", "time (UTC)"):
        table.add_column(name, no_wrap=True)
    table.add_column("content", overflow="fold")
    for record in records:
        for row in record_rows(record):
            table.add_row(*row)
    return table
