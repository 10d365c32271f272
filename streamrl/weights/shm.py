"""Shared-memory transport: each version is a segment in /dev/shm (POSIX shared memory is a
tmpfs), for producers on the same machine as the trainer.

    locator: shm://streamrl-<namespace>-v<version:08d>    (the file /dev/shm/<that name>)

A segment is one contiguous buffer: a small header (names, dtypes, shapes, offsets; the
safetensors layout of `layout.py`) followed by the tensor bytes. The trainer writes it once and
renames it into place. Readers copy it out in one multi-threaded copy, or with `zero_copy=True`
get tensors that view a private copy-on-write mapping. Lifetime of zero-copy tensors: they stay
valid after the version is released or the transport closed (unlinking keeps mapped pages), and
the memory returns to the system only once the last such tensor is freed, so a reader should
drop them (for example after copying into its model) rather than hold many versions. Copying a
zero-copy load into an existing model is the fastest way in (see tests/weights/bench_weights.py).

Why files in /dev/shm rather than `multiprocessing.shared_memory`: on Python < 3.13 every process
that attaches a SharedMemory registers it with its resource tracker, which unlinks the segment
when that reader exits, pulling the version from under other readers. Files also let us reserve
space with `posix_fallocate` (a full /dev/shm raises ENOSPC instead of killing the trainer with
SIGBUS; docker's default /dev/shm is only 64 MiB, raise it with --shm-size) and rename atomically.

If the trainer crashes, its segments stay in /dev/shm (RAM) until removed: names carry the run's
namespace so that the restarted run (or an operator) can remove exactly those with
`ShmTransport(namespace=...).remove_stale()`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Self

from streamrl.weights.segment import SegmentTransport

if TYPE_CHECKING:
    from streamrl.weights import TransportConfig

SHM_DIR = "/dev/shm"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_SEGMENT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


class ShmTransport(SegmentTransport):
    name = "shm"
    suffix = ""
    fsync = False
    copy_from_mapping = True  # tmpfs pages cannot vanish under a mapping
    file_mode = 0o600  # like shm_open's usual mode: only the run's own user maps its weights

    def __init__(self, namespace: str | None = None, *, keep_last: int = 2,
                 directory: str | Path = SHM_DIR) -> None:
        """`namespace` (normally the run id) prefixes segment names; required to publish. A
        reader-only instance needs none. `directory` is the tmpfs to use."""
        if namespace is not None and not _NAMESPACE.match(namespace):
            raise ValueError(f"namespace {namespace!r}: use 1-100 letters, digits, '_' or '-'")
        self.namespace = namespace
        path = Path(directory)
        if not path.is_dir():
            raise ValueError(f"{path} does not exist: the shm transport needs a tmpfs such as "
                             f"/dev/shm (Linux); use the file transport elsewhere")
        prefix = f"streamrl-{namespace}-" if namespace is not None else ""
        super().__init__(directory=path, prefix=prefix, keep_last=keep_last)

    @classmethod
    def from_config(cls, config: TransportConfig) -> Self:
        return cls(config.namespace, keep_last=config.keep_last,
                   directory=config.directory or SHM_DIR)

    def _publish_dir(self) -> Path:
        if self.namespace is None:
            raise ValueError("this ShmTransport has no namespace to publish under; set "
                             "namespace (normally the run id)")
        assert self.directory is not None
        return self.directory

    def _locator_of(self, path: Path) -> str:
        return f"shm://{path.name}"

    def _path_of(self, locator: str) -> Path:
        name = self._split(locator)
        # Locators come from the log: never let one point outside the shm directory.
        if not _SEGMENT_NAME.match(name):
            raise ValueError(f"{locator!r}: not a shared-memory segment name")
        assert self.directory is not None
        return self.directory / name
