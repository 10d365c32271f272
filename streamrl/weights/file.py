"""File transport: each version is a safetensors file in a directory, for readers on other
machines that mount the same filesystem (or a process started later on this one).

    locator: file://<absolute path>/v<version:08d>.safetensors

Files are written under a temporary name, fsynced, renamed into place and the directory fsynced,
so a crash never leaves a partial file under a final name. Zero-copy loads map the file: safe on
a local filesystem even after release (the mapping keeps the unlinked inode); on NFS a mapping of
a file deleted by another machine can fault, so readers there should load with copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Self

from streamrl.weights.segment import SegmentTransport

if TYPE_CHECKING:
    from streamrl.weights import TransportConfig


class FileTransport(SegmentTransport):
    name = "file"
    suffix = ".safetensors"
    fsync = True
    copy_from_mapping = False  # on NFS a file removed elsewhere would SIGBUS a mapping
    file_mode = 0o644  # readers may run as other users on other machines

    def __init__(self, directory: str | Path | None = None, *, keep_last: int = 2) -> None:
        """`directory` is where this instance publishes (created if missing); a reader-only
        instance needs none, since locators carry absolute paths."""
        path = None
        if directory is not None:
            path = Path(directory).absolute()
            path.mkdir(parents=True, exist_ok=True)
        super().__init__(directory=path, prefix="", keep_last=keep_last)

    @classmethod
    def from_config(cls, config: TransportConfig) -> Self:
        return cls(config.directory, keep_last=config.keep_last)

    def _publish_dir(self) -> Path:
        if self.directory is None:
            raise ValueError("this FileTransport has no directory to publish to; set directory")
        return self.directory

    def _locator_of(self, path: Path) -> str:
        return f"file://{path}"

    def _path_of(self, locator: str) -> Path:
        path = Path(self._split(locator))
        if not path.is_absolute():
            raise ValueError(f"{locator!r}: a file locator holds an absolute path")
        return path
