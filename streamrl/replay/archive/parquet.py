"""The samples of a run as one Parquet table, for analysis without streamrl: one row per sample
with the trajectory schema's columns (token ids, logprobs and per-token versions as lists), plus
where the sample lives in the log and the version the trainer trained it into (null if never)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from streamrl.log import Record
from streamrl.records import decode_trajectory_record
from streamrl.schemas import BatchFormed, DecodeError


def write_samples(records: list[Record], batches: list[BatchFormed], path: Path) -> int:
    """Write the decodable trajectory `records` as Parquet at `path`; returns the row count.
    Undecodable records are left out (the run's dead-letter stream names them)."""
    trained = {sid: b.policy_version + 1 for b in batches for sid in b.sample_ids}
    tables = []
    for record in records:
        try:
            batch = decode_trajectory_record(record)
        except DecodeError:
            continue
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        table = table.append_column("log_partition", pa.array([record.partition] * n, pa.int32()))
        table = table.append_column("log_offset", pa.array([record.offset] * n, pa.int64()))
        table = table.append_column("trained_version", pa.array(
            [trained.get(s) for s in table["sample_id"].to_pylist()], pa.int64()))
        tables.append(table.replace_schema_metadata(None))
    if not tables:
        return 0
    table = pa.concat_tables(tables, promote_options="default")
    pq.write_table(table, path)
    return table.num_rows
