"""Transports that keep each weight version as one segment file (`layout.py`) in a directory:
the file transport (a shared filesystem) and the shm transport (tmpfs in /dev/shm).

Segment names are `<prefix>v<version:08d><suffix>`. A segment is written under a temporary name
(`<name>.tmp-<pid>-<random>`) and renamed into place, so a reader sees a whole version or
nothing. Release unlinks the name; on POSIX a reader that already opened or mapped it keeps its
bytes.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import torch

from streamrl.weights import layout
from streamrl.weights.base import (
    PendingVersion,
    Published,
    WeightFormatError,
    WeightTransport,
    WeightTransportError,
    WeightVersionUnavailable,
)
from streamrl.weights.digest import weights_digest

_NAME = re.compile(r"^(?P<prefix>.*?)v(?P<version>\d{8,})(?P<suffix>\.safetensors)?"
                   r"(?P<tmp>\.tmp-[0-9a-f-]+)?$")


class SegmentTransport(WeightTransport):
    suffix: ClassVar[str]
    fsync: ClassVar[bool]  # durability across machine crashes; pointless on tmpfs
    copy_from_mapping: ClassVar[bool]  # see layout.read
    file_mode: ClassVar[int]

    def __init__(self, *, directory: Path | None, prefix: str, keep_last: int) -> None:
        super().__init__(keep_last=keep_last)
        self.directory = directory
        self.prefix = prefix
        self._digest_pool: concurrent.futures.ThreadPoolExecutor | None = None

    @abc.abstractmethod
    def _locator_of(self, path: Path) -> str: ...

    @abc.abstractmethod
    def _path_of(self, locator: str) -> Path:
        """The segment file a locator names; ValueError for a malformed locator."""

    @abc.abstractmethod
    def _publish_dir(self) -> Path:
        """Where this instance publishes; ValueError saying which option to set if it can't."""

    def _publish(self, version: int, tensors: Mapping[str, torch.Tensor]) -> Published:
        locator, written, _ = self._write(version, tensors, digest=True)
        return Published(version=version, locator=locator, digest=written.digest,
                         num_bytes=written.num_bytes, transport=self.name)

    def _begin_publish(self, version: int, tensors: Mapping[str, torch.Tensor]
                       ) -> concurrent.futures.Future[Published]:
        """Write the segment now; hash it (the file, not `tensors`, which the caller may change
        from now on) on this instance's digest thread."""
        locator, written, path = self._write(version, tensors, digest=False)

        def digest() -> Published:
            segment = layout.read(str(path), zero_copy=True)  # the mapping outlives an unlink
            return Published(version=version, locator=locator,
                             digest=weights_digest(segment.tensors),
                             num_bytes=written.num_bytes, transport=self.name)

        if self._digest_pool is None:
            self._digest_pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"{self.name}-digest")
        return self._digest_pool.submit(digest)

    def finish_publish(self, pending: PendingVersion) -> Published:
        """As the base class does; then also remove this prefix's segments (and torn temporary
        files) older than the newest `keep_last` versions that this instance does not hold: what
        a killed predecessor of a restarted publisher left behind. Without this, every trainer
        kill would leave up to `keep_last` full copies of the weights in /dev/shm for good."""
        published = super().finish_publish(pending)
        if self._retained and self._retained[-1] is published:
            self._sweep_before(published.version - self.keep_last + 1)
        return published

    def _sweep_before(self, version: int) -> None:
        held = {self._path_of(p.locator) for p in self._retained}
        for path, v in self._own_files():
            if v < version and path not in held:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _own_files(self) -> list[tuple[Path, int]]:
        """(path, version) of every segment and temporary file under this instance's prefix."""
        directory = self._publish_dir()
        if not directory.exists():
            return []
        found = []
        for name in os.listdir(directory):
            m = _NAME.match(name)
            if m and m["prefix"] == self.prefix and (m["suffix"] or "") == self.suffix:
                found.append((directory / name, int(m["version"])))
        return found

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._digest_pool is not None:
                self._digest_pool.shutdown(wait=True)
                self._digest_pool = None

    def _write(self, version: int, tensors: Mapping[str, torch.Tensor], *, digest: bool
               ) -> tuple[str, layout.Written, Path]:
        """Write the version's segment under its final name: (locator, written, path)."""
        final = self._publish_dir() / f"{self.prefix}v{version:08d}{self.suffix}"
        locator = self._locator_of(final)
        # Refuse to replace: a locator must never name two different sets of tensors. A leftover
        # from a crashed run of the same name is removed with `remove_stale()` at startup.
        if final.exists():
            raise WeightTransportError("already exists (stale from a crashed run? call "
                                       "remove_stale() before publishing)",
                                       locator=locator, version=version)
        # Unique even across containers that share /dev/shm but not a pid namespace.
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            written = layout.write(str(tmp), version, tensors, fsync=self.fsync,
                                   mode=self.file_mode, digest=digest)
            os.rename(tmp, final)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise WeightTransportError(f"publish failed: {e}", locator=locator,
                                       version=version) from e
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.fsync:  # make the rename itself durable
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return locator, written, final

    def _read(self, locator: str, *, zero_copy: bool) -> tuple[int, dict[str, torch.Tensor]]:
        path = self._path_of(locator)
        m = _NAME.match(path.name)
        if m is None or m["tmp"]:
            raise ValueError(f"{locator!r} does not name a weight segment (<prefix>v<version>)")
        version = int(m["version"])
        try:
            segment = layout.read(str(path), zero_copy=zero_copy,
                                  copy_from_mapping=self.copy_from_mapping)
        except FileNotFoundError:
            newest = max(_versions(path.parent, m["prefix"], m["suffix"] or ""), default=None)
            released = newest is not None and newest > version
            hint = f" (newest here: v{newest})" if newest is not None else ""
            raise WeightVersionUnavailable(locator=locator, version=version, released=released,
                                           hint=hint) from None
        except ValueError as e:
            raise WeightFormatError(str(e), locator=locator, version=version) from None
        except OSError as e:  # e.g. ESTALE: removed by another machine while being read
            raise WeightTransportError(f"read failed: {e}", locator=locator,
                                       version=version) from e
        if segment.version != version:
            raise WeightFormatError(f"segment header says version {segment.version}",
                                    locator=locator, version=version)
        return version, segment.tensors

    def _release(self, locator: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path_of(locator))

    def discard_after(self, version: int) -> None:
        for path, v in self._own_files():
            if v > version:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def remove_stale(self) -> list[Path]:
        """Remove segments and temporary files under this instance's prefix that it does not
        hold: what a crashed publisher of the same run left behind. Call it when a publisher
        starts, never while another live publisher uses the same prefix."""
        held = {self._path_of(p.locator) for p in self._retained}
        removed = []
        for path, _ in self._own_files():
            if path not in held:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                removed.append(path)
        return removed


def _versions(directory: Path, prefix: str, suffix: str) -> list[int]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [int(m["version"]) for m in map(_NAME.match, names)
            if m and not m["tmp"] and m["prefix"] == prefix and (m["suffix"] or "") == suffix]
