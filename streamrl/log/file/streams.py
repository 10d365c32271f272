"""Streams of the file log: names, and the metadata file that fixes a stream's partition count.

`<root>/<stream>/stream.json` holds `{"version": 1, "num_partitions": N}`. It is created once and
atomically: written to a temp file, fsynced, then hard-linked to its name. A link, unlike a
rename, fails when the name exists, so when processes race to create a stream exactly one count
wins and everyone reads that one. The partition directories are made before the link, so a
stream that is listed is whole. Counts never change, so they are cached after the first read.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import msgspec

from streamrl.log.base import StreamNotFoundError
from streamrl.log.file.writer import fsync_dir, write_all

# Stream names become directory names; a leading "_" is kept for the log's own directories.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
META = "stream.json"


class StreamMeta(msgspec.Struct, kw_only=True):
    version: int = 1
    num_partitions: int


def check_name(stream: str) -> None:
    if not _NAME.fullmatch(stream):
        raise ValueError(
            f"bad stream name {stream!r}: use up to 200 letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )


class Streams:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._counts: dict[str, int] = {}

    def count(self, stream: str) -> int:
        """Partitions of an existing stream; StreamNotFoundError otherwise. A tiny read at most,
        so callers on the event loop may use it."""
        n = self._counts.get(stream)
        if n is None:
            if not _NAME.fullmatch(stream):
                raise StreamNotFoundError(f"stream {stream!r} does not exist")
            try:
                data = (self.root / stream / META).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                raise StreamNotFoundError(f"stream {stream!r} does not exist") from None
            n = self._counts[stream] = msgspec.json.decode(data, type=StreamMeta).num_partitions
        return n

    def create(self, stream: str, num_partitions: int) -> int:
        """Create `stream` unless it exists; returns its count (blocking: the writer thread)."""
        sdir = self.root / stream
        sdir.mkdir(exist_ok=True)
        for p in range(num_partitions):
            (sdir / str(p)).mkdir(exist_ok=True)
        tmp = sdir / f".{META}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, [msgspec.json.encode(StreamMeta(num_partitions=num_partitions))], 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, sdir / META)
        except FileExistsError:
            pass  # another process won the race; its count stands
        finally:
            os.unlink(tmp)
        fsync_dir(sdir)
        fsync_dir(self.root)
        return self.count(stream)

    def names(self, prefix: str) -> list[str]:
        """Existing streams starting with `prefix`, sorted (blocking: a directory listing)."""
        return sorted(
            n
            for n in os.listdir(self.root)
            if n.startswith(prefix) and _NAME.fullmatch(n) and (self.root / n / META).exists()
        )
