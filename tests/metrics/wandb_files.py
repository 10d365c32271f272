"""Reading what W&B wrote offline (`runs/<run>/wandb/offline-run-*/run-<id>.wandb`), for tests.

The file is W&B's transaction log: a 7-byte header (":W&B", a 2-byte magic, a version byte),
then LevelDB-log records in 32 KiB blocks (4-byte CRC, 2-byte little-endian length, 1-byte type:
1 full, 2 first, 3 middle, 4 last), each payload one `wandb_internal_pb2.Record`."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024


def _payloads(data: bytes) -> list[bytes]:
    assert data[:4] == b":W&B", f"not a W&B transaction log: {data[:7]!r}"
    out, parts, pos = [], [], 7
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # too little left in the block for a header: padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding to the block's end
            pos += room
            continue
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            out.append(b"".join(parts))
            parts = []
    return out


def read_offline_run(run_file: Path) -> dict[str, Any]:
    """{"run_id", "project", "config": {key: value}, "history": [{key: value}, ...]}."""
    found: dict[str, Any] = {"config": {}, "history": []}
    for payload in _payloads(run_file.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found["run_id"], found["project"] = record.run.run_id, record.run.project
            found["config"].update({i.key: json.loads(i.value_json)
                                    for i in record.run.config.update})
        elif kind == "config":
            found["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            found["history"].append({i.key or ".".join(i.nested_key): json.loads(i.value_json)
                                     for i in record.history.item})
    return found


def offline_run_file(run_dir: Path, run_id: str) -> Path:
    [path] = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    return path
