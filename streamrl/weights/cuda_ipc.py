"""CUDA IPC transport: trainer and engine processes on the same GPU share a ring of device
buffers; nothing crosses PCIe or host memory, and a reader maps each buffer once.

    locator: cuda_ipc://streamrl-<namespace>-v<version:08d>.ipc   (a manifest file in /dev/shm)

The publisher owns a ring of `slots` preallocated device buffers, each exported with one CUDA
IPC handle when it is allocated. `publish` picks a slot (`cuda_ring.choose_slot`), waits until
no reader still copies out of it, copies (and, with `dtype`, casts) the tensors into it with one
`_foreach_copy_`, and writes a manifest naming the version, the slot and the slot's generation.
A reader opens each slot's handle once and keeps it mapped (`cudaIpcOpenMemHandle` costs
milliseconds, the copy itself about one), so later versions in that slot cost a manifest read
and the caller's copy. `load` returns tensors viewing the slot and holds it until `done()`
(or the reader's next `load`/`close`): the publisher never overwrites a held slot. A manifest
whose slot moved on to a newer generation is WeightVersionUnavailable, never newer bytes.

Digests: `Published.digest` (announced in the log, recomputed by audit and replay) is always
the canonical `weights_digest` of the tensors the trainer passed. With `dtype` (for example
the engine's "bfloat16") the slot holds cast tensors, so the manifest also records their own
digest; `load(expected_digest=...)` checks the announced digest against the manifest's source
digest and the slot's bytes against the cast digest. Hashing needs a device-to-host copy;
`bench/weight_sync.py` reports it apart from the device path. Nothing is pickled: manifests are
JSON read from a locator that came from the log, so a hostile locator can at worst fail to open.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Self

import torch

from streamrl.weights.base import (
    Published,
    WeightDigestMismatch,
    WeightFormatError,
    WeightTransport,
    WeightTransportError,
    WeightVersionUnavailable,
    move_to,
)
from streamrl.weights.cuda_buffers import (
    DTYPES,
    Held,
    HostStaging,
    b64,
    device_of,
    gpu_uuid,
    layout,
    open_slot,
    read_all,
    unpack,
)
from streamrl.weights.cuda_ring import (
    ReaderTimeout,
    Ring,
    SlotOverwritten,
    choose_slot,
    reader_token,
)
from streamrl.weights.digest import weights_digest

if TYPE_CHECKING:
    from streamrl.weights import TransportConfig

SHM_DIR = "/dev/shm"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_NAME = re.compile(r"^streamrl-[A-Za-z0-9_-]+-v(?P<version>\d{8,})\.ipc$")
# (ring, slot) -> device buffer this process exported: CUDA refuses to open a handle in the
# process that made it, so a reader in the publisher's process views the buffer directly.
_EXPORTED: dict[tuple[str, int], torch.Tensor] = {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Copied:
    """A version copied into its slot whose manifest is not written yet."""

    version: int
    final: Path
    locator: str
    slot: int
    generation: int
    buffer: torch.Tensor
    handle: list
    entries: list
    slot_bytes: torch.Tensor
    num_bytes: int
    snapshot: tuple[torch.Tensor, list] | None  # (uncast bytes, their entries) when casting


class CudaIpcTransport(WeightTransport):
    name = "cuda_ipc"

    def __init__(self, namespace: str | None = None, *, keep_last: int = 2,
                 directory: str | Path = SHM_DIR, slots: int | None = None,
                 dtype: str | None = None, ack_timeout_s: float = 60.0,
                 map_once: bool = True) -> None:
        """`namespace` (normally the run id) names the manifests; required to publish.
        `slots`: device buffers in the ring (default max(2, keep_last)); `dtype`: cast floating
        tensors to it when publishing (the engine's dtype, e.g. "bfloat16"); `ack_timeout_s`:
        how long a publish waits for a reader to finish with a slot; `map_once=False` reopens
        the IPC handle on every load (the old path, kept for bench/weight_sync.py)."""
        super().__init__(keep_last=keep_last)
        if namespace is not None and not _NAMESPACE.match(namespace):
            raise ValueError(f"namespace {namespace!r}: use 1-100 letters, digits, '_' or '-'")
        self.slots = max(2, keep_last) if slots is None else slots
        if self.slots < keep_last:
            raise ValueError(f"cuda_ipc keeps at most one version per ring slot: slots "
                             f"({self.slots}) must be >= keep_last ({keep_last})")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(sorted(DTYPES))}")
        self.namespace, self.dtype, self.map_once = namespace, dtype, map_once
        self.ack_timeout_s = ack_timeout_s
        self.directory = Path(directory)
        self._dir = str(self.directory)
        if not self.directory.is_dir():
            raise ValueError(f"{self.directory} does not exist: the cuda_ipc transport keeps "
                             "its manifests on a local tmpfs such as /dev/shm")
        self._ring: Ring | None = None  # created on the first publish
        self._buffers: dict[int, tuple[torch.Tensor, list]] = {}  # slot -> (buffer, handle)
        self._written: list[int] = []  # slots, least recently written first
        self._in_slot: dict[int, str] = {}  # slot -> locator of the version it holds
        self._host = HostStaging()  # pinned buffers for digests, reused
        self._snapshot: torch.Tensor | None = None  # begin_publish's uncast copy, when casting
        self._digest_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._digest_stream: torch.cuda.Stream | None = None
        self._token = reader_token()
        self._holding: Held | None = None  # what `done` releases
        self._verifying: concurrent.futures.Future[str] | None = None
        self._verify_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._side: torch.cuda.Stream | None = None  # verify_later's device-to-host copies
        self._rings: dict[str, Ring] = {}  # by name, as manifests give them
        self._mapped: dict[tuple[str, int], tuple[list, torch.Tensor]] = {}
        # (ring, slot) -> (layout id, manifest entries, views of the mapped slot)
        self._views: dict[tuple[str, int], tuple[str, list, dict[str, torch.Tensor]]] = {}
        # the last publish: waiting for readers, copying into the slot, digests (bench reads it)
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_config(cls, config: TransportConfig) -> Self:
        return cls(config.namespace, keep_last=config.keep_last,
                   directory=config.directory or SHM_DIR, slots=config.slots, dtype=config.dtype)

    # --- publisher ------------------------------------------------------------------------------
    def _publish(self, version: int, tensors: Mapping[str, torch.Tensor]) -> Published:
        copied = self._copy_in(version, tensors, snapshot=False)
        return self._finish(copied, *self._digests(copied.slot_bytes, copied.entries, tensors))

    def _begin_publish(self, version: int, tensors: Mapping[str, torch.Tensor]
                       ) -> concurrent.futures.Future[Published]:
        """Copy into the slot now (and, when publishing casts, the uncast tensors into a device
        snapshot, whose digest is the announced one); the device-to-host copies (on a side
        stream, so they queue behind none of the trainer's kernels), the hashing and the
        manifest follow on this instance's digest thread. The snapshot costs one more copy of
        the weights in device memory."""
        copied = self._copy_in(version, tensors, snapshot=self.dtype is not None)

        def digest() -> Published:
            t0 = time.perf_counter()
            if self._digest_stream is None:
                self._digest_stream = torch.cuda.Stream(copied.slot_bytes.device)
            with torch.cuda.stream(self._digest_stream):
                slot_view = unpack(self._host.copy(copied.slot_bytes, "slot"), copied.entries)
                if copied.snapshot is None:
                    digest = source_digest = weights_digest(slot_view)
                else:
                    host = self._host.copy(copied.snapshot[0], "source")
                    with concurrent.futures.ThreadPoolExecutor(1) as pool:
                        slot_digest = pool.submit(weights_digest, slot_view)
                        source_digest = weights_digest(unpack(host, copied.snapshot[1]))
                        digest = slot_digest.result()
            self.last_timings["digest_ms"] = (time.perf_counter() - t0) * 1e3
            return self._finish(copied, digest, source_digest)

        if self._digest_pool is None:
            self._digest_pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="cuda_ipc-digest")
        return self._digest_pool.submit(digest)

    def _copy_in(self, version: int, tensors: Mapping[str, torch.Tensor], *,
                 snapshot: bool) -> _Copied:
        """Wait for the slot's readers to let go, copy (and cast) `tensors` into it; with
        `snapshot`, also copy them uncast into a device buffer kept for the next version."""
        if self.namespace is None:
            raise ValueError("this CudaIpcTransport has no namespace to publish under; set "
                             "namespace (normally the run id)")
        device = device_of(tensors)
        self.done()  # this instance's own reads end with its next publish
        entries, sources = layout(tensors, DTYPES.get(self.dtype or ""))
        final = self.directory / f"streamrl-{self.namespace}-v{version:08d}.ipc"
        locator = f"cuda_ipc://{final.name}"
        if final.exists():  # a locator never names two different sets of tensors
            raise WeightTransportError("already exists (left by a crashed run? "
                                       "remove_stale() first)", locator=locator, version=version)
        if self._ring is None:
            self._ring = Ring.create(self.directory, self.namespace, self.slots)
            self._written = list(range(self.slots))
        ring = self._ring
        slot = choose_slot(self._written, {h.slot for h in ring.holds()})
        if slot in self._in_slot:  # its version goes: a locator never names reused bytes
            self.release(self._in_slot.pop(slot))
        t0 = time.perf_counter()
        generation = ring.begin_write(slot)
        try:
            ring.wait_released(slot, generation, timeout_s=self.ack_timeout_s)
        except ReaderTimeout as e:
            raise WeightTransportError(str(e), locator=locator, version=version) from None
        t1 = time.perf_counter()
        nbytes = max((o + n for _, o, n, _ in sources), default=0)
        buffer, handle = self._slot_buffer(slot, nbytes, device)
        with torch.no_grad():
            dst = [buffer[o : o + n].view(dt).view(t.shape) for t, o, n, dt in sources]
            torch._foreach_copy_(dst, [t.detach().to(device) for t, _, _, _ in sources])
            kept = self._snapshot_of(tensors, device) if snapshot else None
        torch.cuda.synchronize(device)
        self.last_timings = {"wait_ms": (t1 - t0) * 1e3,
                             "copy_ms": (time.perf_counter() - t1) * 1e3}
        num_bytes = sum(t.numel() * t.element_size() for t, _, _, _ in sources)
        return _Copied(version=version, final=final, locator=locator, slot=slot,
                       generation=generation, buffer=buffer, handle=handle, entries=entries,
                       slot_bytes=buffer[:nbytes], num_bytes=num_bytes, snapshot=kept)

    def _snapshot_of(self, tensors: Mapping[str, torch.Tensor], device: torch.device
                     ) -> tuple[torch.Tensor, list]:
        """`tensors` uncast in a reused device buffer: (its bytes, their manifest entries)."""
        entries, sources = layout(tensors, None)
        nbytes = max((o + n for _, o, n, _ in sources), default=0)
        if self._snapshot is None or self._snapshot.numel() < nbytes or \
                self._snapshot.device != device:
            self._snapshot = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
        dst = [self._snapshot[o : o + n].view(dt).view(t.shape) for t, o, n, dt in sources]
        torch._foreach_copy_(dst, [t.detach().to(device) for t, _, _, _ in sources])
        return self._snapshot[:nbytes], entries

    def _finish(self, c: _Copied, digest: str, source_digest: str) -> Published:
        """Write the version's manifest: from now on it is loadable."""
        assert self._ring is not None
        head = {"version": c.version, "ring": self._ring.path.name, "slot": c.slot,
                "generation": c.generation, "gpu": gpu_uuid(c.buffer.device),
                "nbytes": c.buffer.numel(), "handle": [b64(x) for x in c.handle],
                "digest": digest, "source_digest": source_digest}
        body = json.dumps(c.entries)
        head["layout"] = hashlib.sha256(body.encode()).hexdigest()[:16]
        tmp = c.final.with_name(f"{c.final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(head) + "\n" + body)
        os.chmod(tmp, 0o600)
        os.rename(tmp, c.final)
        self._written.remove(c.slot)
        self._written.append(c.slot)
        self._in_slot[c.slot] = c.locator
        return Published(version=c.version, locator=c.locator, digest=source_digest,
                         num_bytes=c.num_bytes, transport=self.name)

    def _slot_buffer(self, slot: int, nbytes: int, device: torch.device
                     ) -> tuple[torch.Tensor, list]:
        """The slot's device buffer, allocated and exported once (again only if a version
        outgrows it or moves to another device)."""
        held = self._buffers.get(slot)
        if held is None or held[0].numel() < nbytes or held[0].device != device:
            buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
            held = (buffer, list(buffer.untyped_storage()._share_cuda_()))
            self._buffers[slot] = held
            _EXPORTED[(self._ring.path.name, slot)] = buffer  # type: ignore[union-attr]
        return held

    def _digests(self, slot_bytes: torch.Tensor, entries: list,
                 tensors: Mapping[str, torch.Tensor]) -> tuple[str, str]:
        """(digest of the slot's tensors, digest of the tensors as passed); the same string
        unless publishing casts. The two hashes run on two threads."""
        t0 = time.perf_counter()
        try:
            return self._digests_now(slot_bytes, entries, tensors)
        finally:
            self.last_timings["digest_ms"] = (time.perf_counter() - t0) * 1e3

    def _digests_now(self, slot_bytes: torch.Tensor, entries: list,
                     tensors: Mapping[str, torch.Tensor]) -> tuple[str, str]:
        slot_view = unpack(self._host.copy(slot_bytes, "slot"), entries)
        if self.dtype is None:
            digest = weights_digest(slot_view)
            return digest, digest
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slot_digest = pool.submit(weights_digest, slot_view)
            source = unpack(self._host.copy_tensors(tensors), layout(tensors, None)[0])
            return slot_digest.result(), weights_digest(source)

    def _release(self, locator: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            os.unlink(self._path_of(locator))

    def close(self) -> None:
        """Release every version, the ring and this reader's mappings. Idempotent."""
        if self._closed:
            return
        try:
            self.done()
            super().close()
        finally:
            if self._ring is not None:
                for slot in self._buffers:
                    _EXPORTED.pop((self._ring.path.name, slot), None)
                self._ring.remove()
            self._buffers.clear()
            self._mapped.clear()
            self._views.clear()
            if self._verify_pool is not None:
                self._verify_pool.shutdown(wait=True)
            if self._digest_pool is not None:
                self._digest_pool.shutdown(wait=True)
            self._snapshot = None
            self._host.clear()

    def remove_stale(self) -> list[Path]:
        """Remove the manifests and rings a crashed publisher of this namespace left behind."""
        if self.namespace is None:
            raise ValueError("remove_stale needs the namespace of the run to clean up")
        ns = re.escape(self.namespace)
        pattern = re.compile(rf"^streamrl-{ns}-(v\d{{8,}}\.ipc(\.tmp-.*)?|ring-[0-9a-f]+)$")
        mine = self._ring.path.name if self._ring is not None else None
        removed = []
        for path in sorted(self.directory.iterdir()):
            if pattern.match(path.name) and path.name != mine and \
                    f"cuda_ipc://{path.name}" not in self._in_slot.values():
                if path.is_dir():
                    Ring(path).remove()
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # --- reader ---------------------------------------------------------------------------------
    def load(self, locator: str, *, expected_digest: str | None = None,
             device: str | torch.device | None = None,
             zero_copy: bool = True) -> dict[str, torch.Tensor]:
        """Tensors viewing the version's ring slot (`device=None`, the default: no copy), held
        until `done()`; or, with `device`, private copies (the slot is released at once).
        Loading releases this reader's previous hold. Same errors as `WeightTransport.load`."""
        self._check_open(locator)
        self.done()
        version, tensors = self._read(locator, zero_copy=True)
        try:
            if expected_digest is not None:
                self._verify(locator, version, expected_digest)
            if device is None:
                return tensors
            return move_to(tensors, torch.device(device))
        except BaseException:
            self.done()
            raise
        finally:
            if device is not None:
                self.done()

    def done(self, locator: str | None = None) -> None:
        """This reader has finished copying out of the slot it holds: wait for the work queued
        on the current CUDA stream (the caller's copies; copies on other streams must be waited
        for first), then let the publisher reuse the slot. Idempotent."""
        if self._holding is None:
            return
        torch.cuda.current_stream(self._holding.buffer.device).synchronize()
        self._holding.ring.release(self._token)
        self._holding = None

    def verify_later(self, locator: str, expected_digest: str) -> concurrent.futures.Future[str]:
        """Check the digest of the version this reader holds (after `load(locator)`, before
        `done()`) off the caller's critical path: a device-to-host copy on a side stream, then
        sha256 on a thread. The slot stays held (under a second hold) until that copy is done,
        however early the caller calls `done()`. The future returns the digest or raises
        WeightDigestMismatch; whoever uses the weights must check it before trusting them."""
        held = self._holding
        if held is None or held.locator != locator:
            raise ValueError(f"verify_later({locator!r}) needs load({locator!r}) first, "
                             "before done()")
        if held.head["source_digest"] != expected_digest:
            raise WeightDigestMismatch(locator=locator, version=held.version,
                                       expected=expected_digest,
                                       actual=held.head["source_digest"])
        if self._verifying is not None:  # one staging buffer: one check at a time
            with contextlib.suppress(Exception):
                self._verifying.result()
        token = reader_token()
        held.ring.hold(token, held.head["slot"], held.head["generation"])
        whole, entries = held.buffer, held.entries
        host = self._host.get("verify", whole.numel())
        if self._side is None or self._side.device != whole.device:
            self._side = torch.cuda.Stream(whole.device)
        with torch.cuda.stream(self._side):
            host.copy_(whole, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._side)

        def check() -> str:
            try:
                copied.synchronize()
            finally:
                held.ring.release(token)
            actual = weights_digest(unpack(host, entries))
            if actual != held.head["digest"]:
                raise WeightDigestMismatch(locator=locator, version=held.version,
                                           expected=held.head["digest"], actual=actual)
            return actual

        if self._verify_pool is None:
            self._verify_pool = concurrent.futures.ThreadPoolExecutor(1)
        self._verifying = self._verify_pool.submit(check)
        return self._verifying

    def _read(self, locator: str, *, zero_copy: bool) -> tuple[int, dict[str, torch.Tensor]]:
        name = self._name_of(locator)
        version = int(_NAME.match(name)["version"])  # type: ignore[index]
        try:
            head_raw, _, body = read_all(f"{self._dir}/{name}").partition(b"\n")
            head = json.loads(head_raw)
            ring = self._rings.get(head["ring"]) or self._rings.setdefault(
                head["ring"], Ring(self.directory / head["ring"]))
            slot, generation = int(head["slot"]), int(head["generation"])
            layout_id = head["layout"]
        except FileNotFoundError:
            raise WeightVersionUnavailable(locator=locator, version=version,
                                           released=True) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightFormatError(f"unreadable manifest: {e}", locator=locator,
                                    version=version) from None
        if head.get("version") != version:
            raise WeightFormatError(f"manifest says version {head.get('version')}",
                                    locator=locator, version=version)
        try:
            ring.hold(self._token, slot, generation)
        except SlotOverwritten as e:
            raise WeightVersionUnavailable(locator=locator, version=version, released=True,
                                           hint=f" ({e})") from None
        key = (ring.path.name, slot)
        try:
            buffer = self._buffer(key, head)
            cached = self._views.get(key)
            if cached is None or cached[0] != layout_id or not self.map_once:
                entries = json.loads(body)
                cached = (layout_id, entries, unpack(buffer, entries))
                if self.map_once:
                    self._views[key] = cached
            self._holding = Held(ring, buffer, locator, version, head, cached[1], cached[2])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            ring.release(self._token)
            self._holding = None
            raise WeightFormatError(f"cannot open the shared buffer: {e}", locator=locator,
                                    version=version) from None
        return version, dict(cached[2])

    def _buffer(self, key: tuple[str, int], head: dict) -> torch.Tensor:
        """The slot's buffer: exported by this process, mapped before (same handle), or opened
        now (and kept mapped unless map_once is off)."""
        if key in _EXPORTED:
            return _EXPORTED[key]
        handle = head["handle"]
        mapped = self._mapped.get(key)
        if mapped is not None and mapped[0] == handle:
            return mapped[1]
        self._views.pop(key, None)
        if len({ring for ring, _ in self._mapped} | {key[0]}) > 1:
            self._mapped.clear()  # a restarted publisher: its old ring is gone
            self._rings = {key[0]: self._rings[key[0]]}
            self._views.clear()
        buffer = open_slot(head)
        if self.map_once:
            self._mapped[key] = (handle, buffer)
        return buffer

    def _verify(self, locator: str, version: int, expected: str) -> None:
        held = self._holding  # held since _read
        assert held is not None
        head = held.head
        if head["source_digest"] != expected:
            raise WeightDigestMismatch(locator=locator, version=version, expected=expected,
                                       actual=head["source_digest"])
        actual = weights_digest(unpack(self._host.copy(held.buffer, "slot"), held.entries))
        if actual != head["digest"]:
            raise WeightDigestMismatch(locator=locator, version=version,
                                       expected=head["digest"], actual=actual)

    def _path_of(self, locator: str) -> Path:
        return self.directory / self._name_of(locator)

    def _name_of(self, locator: str) -> str:
        name = locator.removeprefix("cuda_ipc://")
        if not locator.startswith("cuda_ipc://") or not _NAME.match(name):
            raise ValueError(f"{locator!r} is not a cuda_ipc locator "
                             "(cuda_ipc://streamrl-<namespace>-v<version>.ipc)")
        return name

