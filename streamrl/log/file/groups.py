"""Committed positions of consumer groups: one small JSON file per group under `<root>/_groups/`,
each position with the metadata string committed with it (only non-empty ones are written, so
files from before metadata existed read as all "").

Each write replaces the whole file atomically (temp file, fsync, rename, fsync the directory), so
a reader or a crash sees the old positions or the new ones, never a mix. Writers hold the log's
transaction lock (txn.py), which serializes read-modify-write of a group file and lets a
pending transaction be rolled forward before any newer positions are written.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import msgspec

from streamrl.log.base import Committed, LogCorruptionError, StreamPartition
from streamrl.log.file.writer import fsync_dir, write_all

Flat = Sequence[tuple[str, int, int]]  # (stream, partition, next offset to read)
FlatMetadata = Sequence[tuple[str, int, str]]  # (stream, partition, metadata), "" left out


class GroupFile(msgspec.Struct, kw_only=True):
    version: int = 1
    positions: list[tuple[str, int, int]] = msgspec.field(default_factory=list)
    metadata: list[tuple[str, int, str]] = msgspec.field(default_factory=list)


def flatten(positions: Mapping[StreamPartition, Committed]) -> tuple[Flat, FlatMetadata]:
    """Positions as stored: offsets, and the non-empty metadata apart."""
    items = sorted(positions.items())
    flat = [(sp.stream, sp.partition, c.offset) for sp, c in items]
    meta = [(sp.stream, sp.partition, c.metadata) for sp, c in items if c.metadata]
    return flat, meta


def unflatten(flat: Flat, meta: FlatMetadata) -> dict[StreamPartition, Committed]:
    by_sp = {StreamPartition(s, p): m for s, p, m in meta}
    return {StreamPartition(s, p): Committed(off, by_sp.get(StreamPartition(s, p), ""))
            for s, p, off in flat}


_decode = msgspec.json.Decoder(GroupFile).decode


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: write a temp file, fsync, rename over, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, [data], 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class GroupStore:
    def __init__(self, root: Path) -> None:
        self.dir = root / "_groups"

    def path(self, group: str) -> Path:
        """The group's file; any group name works (it is percent-encoded)."""
        name = quote(group, safe="")
        if not group or len(name) > 200:
            raise ValueError(f"group name {group!r} is empty or too long")
        return self.dir / f"{name}.json"

    def read(self, group: str) -> dict[StreamPartition, Committed]:
        path = self.path(group)
        try:
            stored = _decode(path.read_bytes())
        except FileNotFoundError:
            return {}
        except msgspec.DecodeError as err:  # only ever replaced whole, so this is damage
            raise LogCorruptionError(f"{path}: unreadable group positions: {err}") from err
        return unflatten(stored.positions, stored.metadata)

    def merge(self, group: str, positions: Mapping[StreamPartition, Committed]) -> None:
        """Set the given positions (each with its metadata, "" replacing any older), keeping the
        group's others (caller holds the txn lock)."""
        if not positions:
            return
        merged = self.read(group)
        merged.update(positions)
        self.dir.mkdir(parents=True, exist_ok=True)
        flat, meta = flatten(merged)
        write_atomic(self.path(group), msgspec.json.encode(
            GroupFile(positions=list(flat), metadata=list(meta))))
