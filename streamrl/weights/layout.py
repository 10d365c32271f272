"""The byte layout of one weight version: a safetensors file.

    [u64 little-endian N][N bytes of JSON header, space-padded][data]

The header maps each stored tensor to {"dtype", "shape", "data_offsets": [begin, end]} relative
to the data region, plus "__metadata__" (strings only): the version and the tied names
("streamrl.aliases": {alias: stored name}), because safetensors cannot express shared storage
and a tied embedding must not be stored twice. Any safetensors reader can read the file;
streamrl's reader restores the aliasing.

Why write the format ourselves instead of calling `safetensors.torch.save_file`: it refuses
tied and non-contiguous tensors, and we want the file created exclusively (O_EXCL), its space
reserved up front, the digest hashed while the bytes are written, and a layout that keeps every
tensor aligned. Contiguous CPU tensors are written straight from their own memory. Tensors are
ordered by element size, largest first, and the data region starts at a 64-byte boundary, so
every tensor is naturally aligned and a zero-copy reader can view it in place.

Headers are untrusted input: every field is checked before any byte is viewed.
"""

from __future__ import annotations

import concurrent.futures
import mmap
import os
import struct
from collections.abc import Mapping
from typing import NamedTuple

import msgspec
import torch

from streamrl.weights.digest import alias_key, tensor_bytes, weights_digest

ALIGN = 64
MAX_HEADER_BYTES = 64 * 1024 * 1024
_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64", torch.bool: "BOOL",
}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    dtype: str
    shape: list[int]
    data_offsets: tuple[int, int]


class Written(NamedTuple):
    num_bytes: int  # tensor data bytes, tied tensors once: the same on every transport
    digest: str


class Segment(NamedTuple):
    version: int
    tensors: dict[str, torch.Tensor]


def _plan(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split into tensors to store and aliases {name: stored name} of tied ones."""
    stored: dict[str, torch.Tensor] = {}
    first_of: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _CODES:
            raise TypeError(f"tensor {name!r}: dtype {t.dtype} has no safetensors code")
        key = alias_key(t)
        if key in first_of:
            aliases[name] = first_of[key]
        else:
            first_of[key] = name
            stored[name] = t
    order = sorted(stored, key=lambda n: (-stored[n].element_size(), n))
    return {name: stored[name] for name in order}, aliases


def write(path: str, version: int, tensors: Mapping[str, torch.Tensor], *, fsync: bool,
          mode: int = 0o644, digest: bool = True) -> Written:
    """Write `tensors` to a new file at `path` (which must not exist). Not atomic by itself:
    callers write to a temporary name and rename. `digest=False` leaves `Written.digest` ""
    (the caller hashes the written file later, off its critical path)."""
    stored, aliases = _plan(tensors)
    # Hash on other threads while this one writes: both run without the GIL, so publish costs
    # about max(hash, write) instead of their sum. (Splitting the write over threads measured
    # no faster on a 16-core host: writes to one file serialize on its inode lock.)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        digest_future = pool.submit(weights_digest, tensors) if digest else None
        header, data_bytes = _header(stored, aliases, version)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            # Reserve the space first, so a full /dev/shm fails before anything is written.
            os.posix_fallocate(fd, 0, len(header) + data_bytes)
            _pwrite_all(fd, memoryview(header), 0)
            offset = len(header)
            for t in stored.values():
                # Plain writes from the tensor's own memory: on a small VM, writing through a
                # fresh mapping of the file was 2.6x slower (a page fault per 4 KiB), and no
                # faster on a 16-core host.
                data = tensor_bytes(t)
                _pwrite_all(fd, data, offset)
                offset += len(data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return Written(data_bytes, "" if digest_future is None else digest_future.result())


def _header(stored: Mapping[str, torch.Tensor], aliases: dict[str, str], version: int
            ) -> tuple[bytes, int]:
    """(length prefix + padded JSON header, size of the data region). The digest is not in the
    header: it is announced in the log, and recomputed by readers that verify."""
    header: dict[str, object] = {"__metadata__": {
        "format": "pt", "streamrl.version": str(version),
        "streamrl.aliases": msgspec.json.encode(aliases).decode()}}
    offset = 0
    for name, t in stored.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _CODES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = msgspec.json.encode(header)
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    return struct.pack("<Q", len(raw)) + raw, offset


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def read(path: str, *, zero_copy: bool, copy_from_mapping: bool = False) -> Segment:
    """Read a segment.

    zero_copy: tensors view a private (copy-on-write) mapping of the file, valid until the last
    of them is freed, even after the file is unlinked.
    Otherwise the tensors view one fresh buffer holding a copy of the data region, filled by
    `pread`, or, with `copy_from_mapping`, by a multi-threaded torch copy out of a mapping (5x
    faster on a 16-core host, where first-touch page faults dominate; only safe where the file
    cannot vanish under the mapping, as on a local tmpfs: on NFS that would be a SIGBUS).

    Raises FileNotFoundError, OSError, or ValueError for a malformed or truncated file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < 8:
            raise ValueError(f"truncated: {size} bytes")
        (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"header length {n} does not fit a {size}-byte file")
        entries, meta = _parse_header(os.pread(fd, n, 8), size - 8 - n)
        if zero_copy:
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
            data = torch.frombuffer(mm, dtype=torch.uint8)[8 + n :]
        elif copy_from_mapping:
            with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as mm:
                mapped = torch.frombuffer(mm, dtype=torch.uint8)
                data = mapped[8 + n :].clone()
                del mapped  # the mapping cannot close while a tensor exports it
        else:
            data = torch.empty(size - 8 - n, dtype=torch.uint8)
            _pread_into(fd, memoryview(data.numpy()), 8 + n)
    finally:
        os.close(fd)
    tensors = {name: _view(data, e) for name, e in entries.items()}
    for alias, target in meta["aliases"].items():
        tensors[alias] = tensors[target]
    return Segment(meta["version"], tensors)


def _pread_into(fd: int, out: memoryview, offset: int) -> None:
    done = 0
    while done < len(out):
        n = os.preadv(fd, [out[done:]], offset + done)
        if n == 0:
            raise ValueError("file shrank while being read")
        done += n


def _view(data: torch.Tensor, e: _Entry) -> torch.Tensor:
    dtype = _DTYPES[e.dtype]
    begin, end = e.data_offsets
    raw = data[begin:end]
    if raw.storage_offset() % dtype.itemsize:  # a foreign file may leave tensors unaligned
        raw = raw.clone()
    return raw.view(dtype).view(e.shape)


def _parse_header(raw: bytes, data_len: int) -> tuple[dict[str, _Entry], dict]:
    try:
        header = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
        meta = msgspec.json.decode(header.pop("__metadata__", b"{}"), type=dict[str, str])
        entries = {name: msgspec.json.decode(v, type=_Entry) for name, v in header.items()}
        aliases = msgspec.json.decode(meta.get("streamrl.aliases", "{}"), type=dict[str, str])
        version = int(meta.get("streamrl.version", "-1"))
    except (msgspec.DecodeError, ValueError) as e:
        raise ValueError(f"malformed header: {e}") from None
    for name, e in entries.items():
        begin, end = e.data_offsets
        if e.dtype not in _DTYPES or any(d < 0 for d in e.shape):
            raise ValueError(f"tensor {name!r}: bad dtype {e.dtype!r} or shape {e.shape}")
        numel = 1
        for d in e.shape:
            numel *= d
        if not 0 <= begin <= end <= data_len or end - begin != numel * _DTYPES[e.dtype].itemsize:
            raise ValueError(f"tensor {name!r}: offsets {e.data_offsets} do not match its shape "
                             f"or the {data_len}-byte data region")
    for alias, target in aliases.items():
        if alias in entries or target not in entries:
            raise ValueError(f"bad alias {alias!r} -> {target!r}")
    return entries, {"version": version, "aliases": aliases}
