"""The device side of the cuda_ipc transport: where each tensor sits in a ring slot, opening a
slot another process exported, and tensors viewing a slot. Manifests are JSON (never pickle),
so everything read from one is checked here before it touches memory."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from streamrl.weights.cuda_ring import Ring
from streamrl.weights.digest import alias_key, dtype_name

ALIGN = 256  # byte alignment of each tensor in a slot (vectorized copies)
DTYPES = {dtype_name(d): d for d in (torch.float32, torch.bfloat16, torch.float16,
                                     torch.float64, torch.int64, torch.int32, torch.uint8,
                                     torch.int8, torch.bool)}


def device_of(tensors: Mapping[str, torch.Tensor]) -> torch.device:
    devices = {t.device for t in tensors.values() if t.device.type == "cuda"}
    if len(devices) > 1:
        raise ValueError(f"cuda_ipc publishes tensors from one CUDA device, got "
                         f"{sorted(map(str, devices))}")
    if not devices and not torch.cuda.is_available():
        raise ValueError("cuda_ipc needs a CUDA device to hold the weights; use the shm or "
                         "file transport on a machine without one")
    # CPU tensors (the run's initial checkpoint) go to the current GPU.
    return next(iter(devices)) if devices else torch.device("cuda", torch.cuda.current_device())


# Projections an engine fuses into one matrix (q|k|v, gate|up): the slot keeps each group's
# members adjacent and in this order, so the engine can hold them as one matrix that is also
# one contiguous range of the slot.
FUSED_GROUPS = {"q_proj": ("qkv", 0), "k_proj": ("qkv", 1), "v_proj": ("qkv", 2),
                "gate_proj": ("gate_up", 0), "up_proj": ("gate_up", 1)}


def slot_order(name: str) -> tuple:
    """Sort key of the canonical slot layout: by name, except that the members of a fused
    group sort together, in fuse order (`...self_attn.q_proj.weight`, `k_proj.weight`,
    `v_proj.weight`; biases, when present, form their own group, which sorts before the
weights'). Publisher and engine both order by it."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in FUSED_GROUPS:
        group, index = FUSED_GROUPS[parts[-2]]
        return (".".join(parts[:-2]), group, parts[-1], index, name)
    return (".".join(parts[:-2]), ".".join(parts[-2:-1]), parts[-1], 0, name)


def layout(tensors: Mapping[str, torch.Tensor], cast: torch.dtype | None
            ) -> tuple[list, list[tuple[torch.Tensor, int, int, torch.dtype]]]:
    """Manifest entries [name, dtype, shape, offset] (tied names share one entry's bytes) and
    (tensor, offset, nbytes, stored dtype) per distinct tensor; floating tensors are stored as
    `cast` when given. Tensors go in `slot_order`, each at an ALIGN boundary: a fused group
    whose members' sizes are multiples of ALIGN is one gapless range. The engine packs its own
    parameters by this same function (`producers/engine/packing.py`), so a slot in its dtype
    and its weights are byte for byte alike and a load is one copy."""
    entries, sources, offset, first = [], [], 0, {}
    for name in sorted(tensors, key=slot_order):
        t = tensors[name]
        key = alias_key(t)
        if key in first:  # tied: the same bytes, published once
            entries.append([name, *first[key]])
            continue
        dt = cast if cast is not None and t.dtype.is_floating_point else t.dtype
        nbytes = t.numel() * dt.itemsize
        first[key] = (dtype_name(dt), list(t.shape), offset)
        entries.append([name, *first[key]])
        sources.append((t, offset, nbytes, dt))
        offset += -(-nbytes // ALIGN) * ALIGN
    return entries, sources


def open_slot(head: dict) -> torch.Tensor:
    device = _device_with_uuid(head["gpu"])
    args = [_unb64(x) for x in head["handle"]]
    args[0] = device  # the exporter's device index may differ under CUDA_VISIBLE_DEVICES
    with torch.cuda.device(device):
        storage = torch.UntypedStorage._new_shared_cuda(*args)
    if storage.nbytes() < head["nbytes"]:
        raise ValueError(f"shared buffer has {storage.nbytes()} bytes, manifest says "
                         f"{head['nbytes']}")
    return torch.empty(0, dtype=torch.uint8, device=f"cuda:{device}").set_(storage)


def unpack(buffer: torch.Tensor, entries: list) -> dict[str, torch.Tensor]:
    out = {}
    for name, dtype, shape, offset in entries:
        if dtype not in DTYPES:
            raise ValueError(f"{name}: unsupported dtype {dtype!r}")
        numel = 1
        for s in shape:
            numel *= int(s)
        nbytes = numel * DTYPES[dtype].itemsize
        if offset < 0 or offset + nbytes > buffer.numel():
            raise ValueError(f"{name}: bytes [{offset}, {offset + nbytes}) outside the buffer")
        out[name] = buffer[offset : offset + nbytes].view(DTYPES[dtype]).view(shape)
    return out


def gpu_uuid(device: torch.device) -> str:
    return str(torch.cuda.get_device_properties(device).uuid)


def _device_with_uuid(uuid: str) -> int:
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == uuid:
            return i
    raise ValueError(f"the weights live on GPU {uuid}, which this process cannot see "
                     "(cuda_ipc needs trainer and engine on the same GPU; check "
                     "CUDA_VISIBLE_DEVICES)")


def b64(x: object) -> object:
    return {"b64": base64.b64encode(x).decode()} if isinstance(x, bytes) else x


def _unb64(x: object) -> object:
    return base64.b64decode(x["b64"]) if isinstance(x, dict) else x


class HostStaging:
    """Reused pinned host buffers for digests: one device-to-host transfer per version, then
    hashing reads host memory at full speed (instead of one pageable copy per tensor)."""

    def __init__(self) -> None:
        self._pinned: dict[str, torch.Tensor] = {}

    def get(self, key: str, n: int) -> torch.Tensor:
        pinned = self._pinned.get(key)
        if pinned is None or pinned.numel() < n:
            pinned = self._pinned[key] = torch.empty(max(n, 1), dtype=torch.uint8,
                                                     pin_memory=True)
        return pinned[:n]

    def copy(self, buffer: torch.Tensor, key: str) -> torch.Tensor:
        """Device bytes in pinned host memory, in one transfer."""
        host = self.get(key, buffer.numel())
        host.copy_(buffer, non_blocking=True)
        torch.cuda.current_stream(buffer.device).synchronize()
        return host

    def copy_tensors(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The tensors as passed (uncast) in pinned host memory, laid out as `layout` says."""
        _, sources = layout(tensors, None)
        host = self.get("source", max((o + n for _, o, n, _ in sources), default=0))
        for t, o, n, dt in sources:
            host[o : o + n].view(dt).view(t.shape).copy_(t.detach(), non_blocking=True)
        torch.cuda.synchronize(device_of(tensors))
        return host

    def clear(self) -> None:
        self._pinned.clear()


@dataclass(frozen=True)
class Held:
    """The version a reader holds between `load` and `done`."""

    ring: Ring
    buffer: torch.Tensor
    locator: str
    version: int
    head: dict
    entries: list  # the manifest's [name, dtype, shape, offset] rows `views` were made from
    views: dict[str, torch.Tensor]


def read_all(path: str) -> bytes:
    """A manifest's bytes with plain os calls (every load reads one: its cost is the load's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
