"""CUDA IPC transport: trainer and engine processes on the same GPU(s) share one device buffer
per weight version; nothing crosses PCIe or host memory.

    locator: cuda_ipc://streamrl-<namespace>-v<version:08d>   (a manifest file in /dev/shm)

`publish` copies the tensors into one fresh contiguous device buffer (a snapshot: the trainer
keeps updating its parameters in place while engines load), exports it with one CUDA IPC
handle, and writes a small JSON manifest (handle, names, dtypes, shapes, byte offsets) under
the locator's name, renamed into place so a reader sees a whole version or nothing. `load` opens
the handle in the reading process and returns tensors that view the shared buffer (no copy); a
caller copies them into its own parameters (`copy_hf_weights` does) and drops them.

Lifetime: the publisher holds each buffer until retention releases it; a reader that still has
it open keeps it alive (PyTorch's IPC reference counting parks the block until every reader has
dropped it), so a slow engine never reads freed or reused memory. Nothing here is pickled: the
manifest is plain JSON read from a locator that came from the log, so a hostile locator can at
worst fail to open.

The digest is the canonical `weights_digest` of the published tensors (hashing needs one device-
to-host copy; `bench/weight_sync.py` reports its cost apart from the device path). The manifest
records the publisher's GPU UUID; a reader on another GPU gets a clear error instead of garbage.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Self

import torch

from streamrl.weights.base import (
    Published,
    WeightFormatError,
    WeightTransport,
    WeightTransportError,
    WeightVersionUnavailable,
)
from streamrl.weights.digest import alias_key, dtype_name, weights_digest

if TYPE_CHECKING:
    from streamrl.weights import TransportConfig

SHM_DIR = "/dev/shm"
ALIGN = 256  # byte alignment of each tensor in the shared buffer (vectorized copies)
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_NAME = re.compile(r"^streamrl-[A-Za-z0-9_-]+-v(?P<version>\d{8,})\.ipc$")
_DTYPES = {dtype_name(d): d for d in (torch.float32, torch.bfloat16, torch.float16,
                                      torch.float64, torch.int64, torch.int32, torch.uint8,
                                      torch.int8, torch.bool)}
# locator -> device buffer, for versions this process published and still holds (retention
# drops them); process-local because IPC handles are process-local too.
_EXPORTED: dict[str, torch.Tensor] = {}


class CudaIpcTransport(WeightTransport):
    name = "cuda_ipc"

    def __init__(self, namespace: str | None = None, *, keep_last: int = 2,
                 directory: str | Path = SHM_DIR) -> None:
        """`namespace` (normally the run id) names the manifests; required to publish."""
        super().__init__(keep_last=keep_last)
        if namespace is not None and not _NAMESPACE.match(namespace):
            raise ValueError(f"namespace {namespace!r}: use 1-100 letters, digits, '_' or '-'")
        self.namespace = namespace
        self._pinned: torch.Tensor | None = None  # host staging for digests, reused
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"{self.directory} does not exist: the cuda_ipc transport keeps "
                             "its manifests on a local tmpfs such as /dev/shm")

    @classmethod
    def from_config(cls, config: TransportConfig) -> Self:
        return cls(config.namespace, keep_last=config.keep_last,
                   directory=config.directory or SHM_DIR)

    # --- publisher ------------------------------------------------------------------------------
    def _publish(self, version: int, tensors: Mapping[str, torch.Tensor]) -> Published:
        if self.namespace is None:
            raise ValueError("this CudaIpcTransport has no namespace to publish under; set "
                             "namespace (normally the run id)")
        devices = {t.device for t in tensors.values() if t.device.type == "cuda"}
        if len(devices) > 1:
            raise ValueError(f"cuda_ipc publishes tensors from one CUDA device, got "
                             f"{sorted(map(str, devices))}")
        if not devices and not torch.cuda.is_available():
            raise ValueError("cuda_ipc needs a CUDA device to hold the weights; use the shm or "
                             "file transport on a machine without one")
        # CPU tensors (the run's initial checkpoint) go to the current GPU.
        device = next(iter(devices)) if devices else torch.device(
            "cuda", torch.cuda.current_device())
        entries, views, offset, first = [], [], 0, {}
        for name in sorted(tensors):
            t = tensors[name]
            key = alias_key(t)
            if key in first:  # tied: the same bytes, published once
                entries.append([name, *first[key]])
                continue
            nbytes = t.numel() * t.element_size()
            first[key] = (dtype_name(t.dtype), list(t.shape), offset)
            entries.append([name, *first[key]])
            views.append((t, offset, nbytes))
            offset += -(-nbytes // ALIGN) * ALIGN
        buffer = torch.empty(max(offset, 1), dtype=torch.uint8, device=device)
        with torch.no_grad():
            dst = [buffer[o : o + n].view(t.dtype).view(t.shape) for t, o, n in views]
            torch._foreach_copy_(dst, [t.detach().to(device) for t, _, _ in views])
        digest = weights_digest(_unpack(self._host_copy(buffer), entries))
        handle = buffer.untyped_storage()._share_cuda_()
        final = self.directory / f"streamrl-{self.namespace}-v{version:08d}.ipc"
        locator = f"cuda_ipc://{final.name}"
        if final.exists():  # a locator never names two different sets of tensors
            raise WeightTransportError("already exists (left by a crashed run? remove it)",
                                       locator=locator, version=version)
        manifest = {"version": version, "gpu": _gpu_uuid(device), "nbytes": buffer.numel(),
                    "handle": [_b64(x) for x in handle], "tensors": entries}
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(manifest))
        os.chmod(tmp, 0o600)
        os.rename(tmp, final)
        _EXPORTED[locator] = buffer
        num_bytes = sum(n for _, _, n in views)
        return Published(version=version, locator=locator, digest=digest, num_bytes=num_bytes,
                         transport=self.name)

    def _host_copy(self, buffer: torch.Tensor) -> torch.Tensor:
        """The whole device buffer in (reused) pinned host memory, in one transfer: hashing
        then reads host memory at full speed instead of one pageable copy per tensor."""
        n = buffer.numel()
        if self._pinned is None or self._pinned.numel() < n:
            self._pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        host = self._pinned[:n]
        host.copy_(buffer, non_blocking=True)
        torch.cuda.current_stream(buffer.device).synchronize()
        return host

    def _release(self, locator: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            os.unlink(self._path_of(locator))
        _EXPORTED.pop(locator, None)

    # --- reader ---------------------------------------------------------------------------------
    def load(self, locator: str, *, expected_digest: str | None = None,
             device: str | torch.device | None = None,
             zero_copy: bool = True) -> dict[str, torch.Tensor]:
        """Tensors viewing the shared device buffer (`device=None`, the default: no copy), or
        copies on `device`. Same errors as `WeightTransport.load`."""
        self._check_open(locator)
        version, tensors = self._read(locator, zero_copy=True)
        if expected_digest is not None:
            from streamrl.weights.base import WeightDigestMismatch

            actual = weights_digest(_unpack(self._host_copy(tensors_buffer(tensors)),
                                            _entries(tensors)))
            if actual != expected_digest:
                raise WeightDigestMismatch(locator=locator, version=version,
                                           expected=expected_digest, actual=actual)
        if device is None:
            return tensors
        from streamrl.weights.base import move_to

        return move_to(tensors, torch.device(device))

    def _read(self, locator: str, *, zero_copy: bool) -> tuple[int, dict[str, torch.Tensor]]:
        path = self._path_of(locator)
        version = int(_NAME.match(path.name)["version"])  # type: ignore[index]
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise WeightVersionUnavailable(locator=locator, version=version,
                                           released=True) from None
        except (OSError, ValueError) as e:
            raise WeightFormatError(f"unreadable manifest: {e}", locator=locator,
                                    version=version) from None
        try:
            # CUDA refuses to open an IPC handle in the process that exported it: a reader in
            # the publisher's own process (trainer and engine in one process) views it directly.
            buffer = _EXPORTED.get(locator)
            buffer = _open(manifest) if buffer is None else buffer
            tensors = _unpack(buffer, manifest["tensors"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise WeightFormatError(f"cannot open the shared buffer: {e}", locator=locator,
                                    version=version) from None
        if manifest.get("version") != version:
            raise WeightFormatError(f"manifest says version {manifest.get('version')}",
                                    locator=locator, version=version)
        return version, tensors

    def _path_of(self, locator: str) -> Path:
        name = locator.removeprefix("cuda_ipc://")
        if not locator.startswith("cuda_ipc://") or not _NAME.match(name):
            raise ValueError(f"{locator!r} is not a cuda_ipc locator "
                             "(cuda_ipc://streamrl-<namespace>-v<version>.ipc)")
        return self.directory / name


def _open(manifest: dict) -> torch.Tensor:
    gpu = manifest["gpu"]
    device = _device_with_uuid(gpu)
    h = manifest["handle"]
    args = [_unb64(x) for x in h]
    args[0] = device  # the exporter's device index may differ under CUDA_VISIBLE_DEVICES
    with torch.cuda.device(device):
        storage = torch.UntypedStorage._new_shared_cuda(*args)
    if storage.nbytes() < manifest["nbytes"]:
        raise ValueError(f"shared buffer has {storage.nbytes()} bytes, manifest says "
                         f"{manifest['nbytes']}")
    return torch.empty(0, dtype=torch.uint8, device=f"cuda:{device}").set_(storage)


def tensors_buffer(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The one uint8 device buffer that `load`'s tensors view."""
    t = next(iter(tensors.values()))
    storage = t.untyped_storage()
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage)


def _entries(tensors: Mapping[str, torch.Tensor]) -> list:
    return [[name, dtype_name(t.dtype), list(t.shape), t.storage_offset() * t.element_size()]
            for name, t in tensors.items()]


def _unpack(buffer: torch.Tensor, entries: list) -> dict[str, torch.Tensor]:
    out = {}
    for name, dtype, shape, offset in entries:
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: unsupported dtype {dtype!r}")
        numel = 1
        for s in shape:
            numel *= int(s)
        nbytes = numel * _DTYPES[dtype].itemsize
        if offset < 0 or offset + nbytes > buffer.numel():
            raise ValueError(f"{name}: bytes [{offset}, {offset + nbytes}) outside the buffer")
        out[name] = buffer[offset : offset + nbytes].view(_DTYPES[dtype]).view(shape)
    return out


def _gpu_uuid(device: torch.device) -> str:
    return str(torch.cuda.get_device_properties(device).uuid)


def _device_with_uuid(uuid: str) -> int:
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == uuid:
            return i
    raise ValueError(f"the weights live on GPU {uuid}, which this process cannot see "
                     "(cuda_ipc needs trainer and engine on the same GPU; check "
                     "CUDA_VISIBLE_DEVICES)")


def _b64(x: object) -> object:
    return {"b64": base64.b64encode(x).decode()} if isinstance(x, bytes) else x


def _unb64(x: object) -> object:
    return base64.b64decode(x["b64"]) if isinstance(x, dict) else x
