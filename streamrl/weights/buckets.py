"""The manifest and bucket layout of a weight version sent as a byte stream (the process-group
transport, `broadcast.py`), independent of how the bytes travel.

A version is one flat byte stream: every stored tensor (tied names stored once) at a 64-byte
aligned offset, in a fixed order (element size descending, then name, as `layout.py` orders a
file, so every tensor is naturally aligned). The stream is cut into buckets of `bucket_bytes`;
a tensor larger than a bucket simply spans several. Bytes are moved as bytes, so every dtype
(bf16, fp32, int, bool) arrives bit-identical and nothing is cast.

Why one byte stream instead of one collective per tensor (what SGLang's update group does): a
few hundred small collectives cost a launch each and never reach link bandwidth, while ~256 MB
buckets do; a receiver receives each bucket straight into its slice of one preallocated buffer
and the tensors are views of it, so the receiver makes no copy at all.

The manifest (names, dtypes, shapes, offsets, bucket size) goes with every version, so a receiver
whose model has other names or shapes fails with a message naming them instead of loading garbage.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping

import msgspec
import torch

from streamrl.weights.digest import alias_key, dtype_name

ALIGN = 64
DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024
# The dtypes a manifest may name (it is read from the wire: never getattr(torch, untrusted)).
DTYPES = {dtype_name(d): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
    torch.float8_e5m2, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
    torch.bool)}


class ManifestMismatch(ValueError):
    """A receiver's expected tensors differ from the sender's manifest."""


class Entry(msgspec.Struct, frozen=True, array_like=True):
    name: str
    dtype: str  # "bfloat16", "float32", ... (torch dtype names)
    shape: tuple[int, ...]
    offset: int  # byte offset in the version's stream, a multiple of ALIGN
    num_bytes: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    entries: tuple[Entry, ...]  # stored tensors, in stream order
    aliases: dict[str, str]  # tied name -> the stored name it shares memory with
    total_bytes: int
    bucket_bytes: int

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor], *,
           bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Manifest:
        if bucket_bytes < ALIGN or bucket_bytes % ALIGN:
            raise ValueError(f"bucket_bytes must be a positive multiple of {ALIGN}, "
                             f"got {bucket_bytes}")
        first_of: dict[tuple, str] = {}
        aliases: dict[str, str] = {}
        stored: list[str] = []
        for name in sorted(tensors):
            key = alias_key(tensors[name])
            if key in first_of:
                aliases[name] = first_of[key]
            else:
                first_of[key] = name
                stored.append(name)
        stored.sort(key=lambda n: (-tensors[n].element_size(), n))
        entries, offset = [], 0
        for name in stored:
            t = tensors[name]
            if dtype_name(t.dtype) not in DTYPES:
                raise TypeError(f"tensor {name!r}: dtype {t.dtype} cannot be broadcast")
            num_bytes = t.numel() * t.element_size()
            entries.append(Entry(name, dtype_name(t.dtype), tuple(t.shape), offset, num_bytes))
            offset += -(-num_bytes // ALIGN) * ALIGN
        return cls(entries=tuple(entries), aliases=aliases, total_bytes=offset,
                   bucket_bytes=bucket_bytes)

    @property
    def num_buckets(self) -> int:
        return -(-self.total_bytes // self.bucket_bytes)

    def bucket(self, index: int) -> tuple[int, int]:
        """The [begin, end) byte range of bucket `index` in the stream."""
        begin = index * self.bucket_bytes
        return begin, min(begin + self.bucket_bytes, self.total_bytes)

    def names(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """{name: (dtype, shape)} of every tensor, tied names included."""
        out = {e.name: (e.dtype, e.shape) for e in self.entries}
        for alias, target in self.aliases.items():
            out[alias] = out[target]
        return out

    def key(self) -> str:
        """sha256 of the layout: equal keys mean the same names, dtypes, shapes and offsets."""
        return hashlib.sha256(msgspec.msgpack.encode(self)).hexdigest()

    def check(self, expected: Mapping[str, tuple[str, tuple[int, ...]]], *, where: str) -> None:
        """Raise ManifestMismatch naming what differs from `expected` ({name: (dtype, shape)},
        e.g. `Manifest.of(model.state_dict()).names()`)."""
        got = self.names()
        problems = [f"missing {n!r}" for n in sorted(set(expected) - set(got))]
        problems += [f"unexpected {n!r}" for n in sorted(set(got) - set(expected))]
        problems += [f"{n!r}: sent {got[n][0]}{list(got[n][1])}, expected "
                     f"{expected[n][0]}{list(expected[n][1])}"
                     for n in sorted(set(got) & set(expected))
                     if (got[n][0], tuple(got[n][1])) != (expected[n][0], tuple(expected[n][1]))]
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ManifestMismatch(f"{where}: the sender's weights do not match this model: "
                                   f"{'; '.join(problems[:5])}{more}")


def expected_names(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """What a receiver whose model holds `tensors` expects ({name: (dtype, shape)})."""
    return {n: (dtype_name(t.dtype), tuple(t.shape)) for n, t in tensors.items()}


def byte_view(t: torch.Tensor) -> torch.Tensor:
    """`t`'s elements as a flat uint8 tensor on its device (a copy only if not contiguous)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def pack(manifest: Manifest, tensors: Mapping[str, torch.Tensor], index: int,
         out: torch.Tensor) -> torch.Tensor:
    """Copy the bytes of bucket `index` into `out` (uint8, >= the bucket's size, on the tensors'
    device); returns the filled slice. Alignment padding is left as is (never read back)."""
    begin, end = manifest.bucket(index)
    buf = out[: end - begin]
    starts = [e.offset for e in manifest.entries]
    i = max(0, bisect.bisect_right(starts, begin) - 1)
    for e in manifest.entries[i:]:
        if e.offset >= end:
            break
        lo, hi = max(begin, e.offset), min(end, e.offset + e.num_bytes)
        if lo >= hi:
            continue
        src = byte_view(tensors[e.name])
        buf[lo - begin : hi - begin].copy_(src[lo - e.offset : hi - e.offset], non_blocking=True)
    return buf


def unpack(manifest: Manifest, stream: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tensors viewing `stream` (the whole received byte stream); tied names share memory."""
    if stream.numel() != manifest.total_bytes:
        raise ValueError(f"stream has {stream.numel()} bytes, the manifest {manifest.total_bytes}")
    out = {}
    for e in manifest.entries:
        dtype = DTYPES.get(e.dtype)
        numel = 1
        for d in e.shape:
            numel *= d
        if (dtype is None or e.offset % ALIGN or e.offset + e.num_bytes > manifest.total_bytes
                or numel * dtype.itemsize != e.num_bytes):
            raise ValueError(f"manifest entry {e.name!r} ({e.dtype}{list(e.shape)} at "
                             f"{e.offset}+{e.num_bytes}) is malformed")
        out[e.name] = stream[e.offset : e.offset + e.num_bytes].view(dtype).view(e.shape)
    for alias, target in manifest.aliases.items():
        out[alias] = out[target]
    return out
