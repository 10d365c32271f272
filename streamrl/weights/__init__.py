"""Weight transports: how a weight version's tensors reach the producers. One interface
(`WeightTransport`), backends picked by name:

    shm   POSIX shared memory (/dev/shm), same machine     shm://streamrl-<namespace>-v<version>
    file  safetensors files on a shared filesystem          file:///abs/dir/v<version>.safetensors
    cuda_ipc  one shared device buffer, same GPU (colocated)  cuda_ipc://streamrl-<namespace>-v<version>.ipc

`open_transport(name, **options)` or `TransportConfig(...).open()` builds one. Every version is
announced in the log with `Published.announce(...)`, and its digest (`weights_digest`) is the
same whichever transport carried it.
"""

from __future__ import annotations

import importlib
from typing import Any

import msgspec

from streamrl.weights.base import (
    Published,
    WeightDigestMismatch,
    WeightFormatError,
    WeightTransport,
    WeightTransportClosed,
    WeightTransportError,
    WeightVersionUnavailable,
)
from streamrl.weights.digest import weights_digest

# name -> "module:Class"; each class is built with `Class(**options)` or `Class.from_config`.
TRANSPORTS: dict[str, str] = {
    "shm": "streamrl.weights.shm:ShmTransport",
    "file": "streamrl.weights.file:FileTransport",
    "cuda_ipc": "streamrl.weights.cuda_ipc:CudaIpcTransport",
    # rank 0 broadcasts to engine ranks over a process group (NCCL/gloo); docs/multi-gpu.md
    "broadcast": "streamrl.weights.broadcast:BroadcastTransport",
}


def transport_class(name: str) -> type[WeightTransport]:
    try:
        target = TRANSPORTS[name]
    except KeyError:
        raise ValueError(f"unknown weight transport {name!r}: expected one of "
                         f"{', '.join(sorted(TRANSPORTS))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def open_transport(name: str, **options: Any) -> WeightTransport:
    """Build the transport registered as `name` (for example `open_transport("shm",
    namespace=run_id)`); a reader-only instance needs no options."""
    return transport_class(name)(**options)


class TransportConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The weight transport of a run."""

    kind: str = "shm"
    """A key of TRANSPORTS: "shm" (producers on the trainer's machine), "file" (a shared
    filesystem), "cuda_ipc" (trainer and engines on the same GPU) or "broadcast" (a process
    group from the trainer, rank 0, to the engines: NCCL across GPUs, gloo on CPU)."""

    keep_last: int = 2
    """Versions the publisher keeps loadable. Producers that fall further behind get
    WeightVersionUnavailable and skip to the newest announcement; raise this if they are often
    slower than a training step."""

    slots: int | None = None
    """cuda_ipc: device buffers in the publisher's ring (default max(2, keep_last)); readers map
    each once, and a slot is reused only after every reader finished copying out of it."""

    dtype: str | None = None
    """cuda_ipc: cast floating tensors to this dtype when publishing (the engine's, e.g.
    "bfloat16"); the announced digest stays that of the trainer's tensors."""

    directory: str | None = None
    """file: where versions are written, at the same path on every reader (required to
    publish). shm: the tmpfs to use (default /dev/shm)."""

    namespace: str | None = None
    """shm, cuda_ipc: segment/manifest-name prefix, normally the run id (required to publish);
    it is what lets a restarted run remove the segments a crashed one left behind."""

    def __post_init__(self) -> None:
        transport_class(self.kind)  # raises with the list of known names
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")

    def open(self) -> WeightTransport:
        return transport_class(self.kind).from_config(self)


__all__ = [
    "TRANSPORTS",
    "Published",
    "TransportConfig",
    "WeightDigestMismatch",
    "WeightFormatError",
    "WeightTransport",
    "WeightTransportClosed",
    "WeightTransportError",
    "WeightVersionUnavailable",
    "open_transport",
    "transport_class",
    "weights_digest",
]
