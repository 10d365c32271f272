"""The weight transport interface: how a weight version's tensors get from trainer to producers.

The log carries `WeightVersionAnnounced(version, digest, num_bytes, locator, transport)`; the
tensors travel over a transport. Every transport (the keys of `streamrl.weights.TRANSPORTS`:
file, shm, cuda_ipc, broadcast) gives the guarantees below; `tests/weights/test_weights_contract.py`
checks them against file and shm, tests/weights/test_cuda_ipc.py and
tests/multigpu/test_broadcast.py against the other two:

- `publish(version, tensors)` returns once the version is loadable at the returned locator, from
  this process and from other processes that can reach it. Versions published by one instance
  strictly increase; a locator is never reused for different tensors.
- `load(locator, expected_digest=...)` returns tensors bit-identical to the published ones (same
  names, dtypes, shapes, bytes; tied names come back tied). With `expected_digest` it verifies
  the canonical digest (`weights_digest`, the same on every transport) and raises
  `WeightDigestMismatch` naming the version and locator instead of returning altered weights.
- Retention: the publisher keeps its `keep_last` newest versions and releases older ones. Loading
  a released version raises `WeightVersionUnavailable(released=True)`; a reader that gets it
  should move on to the newest announced version. A load that already started is unaffected.
- `close()` releases every version this instance still holds; it is idempotent.
- `begin_publish(version, tensors)` returns once the version's bytes are copied out of
  `tensors` (the caller may change them from then on) and computes the digest on a background
  thread; `finish_publish(pending)` waits for it and returns what `publish` would have. The
  version is loadable, and may be announced, only after `finish_publish`. At most one version is
  pending: the next `begin_publish` (or `close`) finishes it first. `publish` is the two at
  once. This keeps the digest off the trainer's critical path (the hashing of one version
  overlaps the next training step) without changing the digest or what readers check.

Calls are synchronous (a load is a memcpy-bound burst between decoding steps); async callers use
`asyncio.to_thread`. An instance is used by one thread at a time. Transports that need a
handshake (broadcast joins a process group) do it in `start()`, which `with` calls; for file and
shm it does nothing. Transports that deliver to a device natively (cuda_ipc, broadcast) override
`load`.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import contextlib
import dataclasses
import re
import time
import warnings
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Self

import msgspec
import torch

from streamrl.schemas.events import WeightVersionAnnounced
from streamrl.weights.digest import weights_digest

if TYPE_CHECKING:
    from streamrl.weights import TransportConfig


class WeightTransportError(Exception):
    """Base of the transport's errors; the message names the version and locator."""

    retriable: bool = False

    def __init__(self, what: str, *, locator: str, version: int | None = None) -> None:
        where = f"weight version {version} at {locator}" if version is not None else locator
        super().__init__(f"{where}: {what}")
        self.locator = locator
        self.version = version


class WeightDigestMismatch(WeightTransportError):
    """The loaded tensors do not hash to the announced digest (corrupted or tampered)."""

    def __init__(self, *, locator: str, version: int | None, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch: announced {expected}, loaded tensors hash to {actual}",
                         locator=locator, version=version)
        self.expected = expected
        self.actual = actual


class WeightVersionUnavailable(WeightTransportError):
    """Nothing at the locator: released by retention (`released`) or never published."""

    def __init__(self, *, locator: str, version: int | None, released: bool,
                 hint: str = "") -> None:
        what = (f"released by retention; load a newer announced version{hint}" if released
                else f"not found (never published here, or already cleaned up){hint}")
        super().__init__(what, locator=locator, version=version)
        self.released = released


class WeightFormatError(WeightTransportError):
    """The stored bytes are not a readable weight version (truncated, malformed header)."""


class WeightTransportClosed(WeightTransportError):
    pass


class Published(msgspec.Struct, frozen=True, kw_only=True):
    """Where a published version lives and what it must hash to."""

    version: int
    locator: str
    digest: str  # weights_digest of the published tensors
    num_bytes: int  # tensor data bytes, tied tensors counted once; equal on every transport
    transport: str
    payload: bytes | None = None  # the tensors themselves, when the version travels inline
    quantized_digest: str | None = None  # the transport holds quantized tensors (fp8.py): theirs
    quantization: str | None = None  # and how they were quantized (fp8.SCHEME)

    def announce(self, *, run_id: str, parent: int | None,
                 batch_ids: tuple[str, ...] = ()) -> WeightVersionAnnounced:
        """The log event for this version."""
        return WeightVersionAnnounced(run_id=run_id, version=self.version, parent=parent,
                                      digest=self.digest, num_bytes=self.num_bytes,
                                      locator=self.locator, transport=self.transport,
                                      batch_ids=batch_ids, payload=self.payload,
                                      quantized_digest=self.quantized_digest,
                                      quantization=self.quantization)


_LOCATOR = re.compile(r"^(?P<scheme>[a-z_]+)://(?P<rest>.+)$")


@dataclasses.dataclass(eq=False)
class PendingVersion:
    """A version copied out of the publisher's tensors whose digest is still being computed
    (`WeightTransport.begin_publish`). `copy_ms`: what `begin_publish` cost the caller;
    `digest_ms`: from the end of the copy until the digest was known (None while pending);
    `digested_at`: when it was known (seconds since the epoch). `finish`: what a publisher
    wrapped around the transport does to the transport's Published last (fp8.py announces the
    trainer's digest beside the quantized one)."""

    version: int
    future: concurrent.futures.Future[Published]
    copy_ms: float
    digest_ms: float | None = None
    digested_at: float | None = None
    finish: Callable[[Published], Published] | None = None

    def __post_init__(self) -> None:
        copied = time.perf_counter()

        def stamp(_: concurrent.futures.Future[Published]) -> None:
            self.digest_ms = (time.perf_counter() - copied) * 1e3
            self.digested_at = time.time()

        self.future.add_done_callback(stamp)


def done_future(published: Published) -> concurrent.futures.Future[Published]:
    future: concurrent.futures.Future[Published] = concurrent.futures.Future()
    future.set_result(published)
    return future


class WeightTransport(abc.ABC):
    """Publishes weight versions and loads them by locator. Subclasses implement `_publish`,
    `_read` and `_release`; retention, digest checks and device placement live here."""

    name: ClassVar[str]  # the registry key, also `WeightVersionAnnounced.transport`

    def __init__(self, *, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.keep_last = keep_last
        self._retained: collections.deque[Published] = collections.deque()
        self._last_version: int | None = None
        self._pending: PendingVersion | None = None
        self._closed = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: TransportConfig) -> Self:
        """Build the transport a run's config describes."""

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:  # noqa: B027 - optional hook
        """Set up whatever the transport needs before the first publish/load. Idempotent."""

    def done(self, locator: str | None = None) -> None:  # noqa: B027 - optional hook
        """The reader has finished copying out of what `load` returned (cuda_ipc lets the
        publisher reuse that ring slot then). Idempotent."""

    def discard_after(self, version: int) -> None:
        """A resumed publisher: drop what a crashed one wrote for versions after `version`, the
        last one committed (never announced, so nobody reads them). Default: nothing kept."""
        return None

    def close(self) -> None:
        """Release every version still held and free the transport's resources. Idempotent."""
        if self._closed:
            return
        try:
            if self._pending is not None:  # its digest thread still reads the version's bytes
                with contextlib.suppress(Exception):  # retained, so released below
                    self.finish_publish(self._pending)
                self._pending = None
            while self._retained:
                self.release(self._retained[0].locator)
        finally:
            self._closed = True

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and self._retained:
            warnings.warn(f"unclosed {type(self).__name__} still holds "
                          f"{len(self._retained)} weight versions", ResourceWarning, stacklevel=1)

    # --- the contract ---------------------------------------------------------------------------
    def publish(self, version: int, tensors: Mapping[str, torch.Tensor]) -> Published:
        """Make `tensors` loadable as `version`, then release versions beyond `keep_last`."""
        return self.finish_publish(self.begin_publish(version, tensors, overlap=False))

    def begin_publish(self, version: int, tensors: Mapping[str, torch.Tensor], *,
                      overlap: bool = True) -> PendingVersion:
        """Copy `tensors` out as `version`; its digest follows on a background thread where the
        transport supports it (file, shm, cuda_ipc), at once otherwise or with `overlap=False`
        (what `publish` does: no snapshot, the digest computed alongside the copy). Finishes
        the pending version first, if any."""
        self._check_open(f"{self.name}://")
        if self._pending is not None:
            self.finish_publish(self._pending)
        if version < 0 or (self._last_version is not None and version <= self._last_version):
            raise ValueError(f"version {version} must be >= 0 and newer than the last published "
                             f"version {self._last_version}")
        if not tensors:
            raise ValueError(f"weight version {version} has no tensors")
        t0 = time.perf_counter()
        future = (self._begin_publish(version, tensors) if overlap
                  else done_future(self._publish(version, tensors)))
        self._last_version = version
        self._pending = PendingVersion(version, future, (time.perf_counter() - t0) * 1e3)
        return self._pending

    def finish_publish(self, pending: PendingVersion) -> Published:
        """Wait for `pending`'s digest (raising what computing it raised), then make it
        loadable and release versions beyond `keep_last`. Idempotent."""
        mine, self._pending = self._pending is pending, (
            None if self._pending is pending else self._pending)
        published = pending.future.result()
        if pending.finish is not None:
            published = pending.finish(published)
        if mine:
            self._retained.append(published)
            while len(self._retained) > self.keep_last:
                self.release(self._retained[0].locator)
        return published

    def load(self, locator: str, *, expected_digest: str | None = None,
             device: str | torch.device = "cpu",
             zero_copy: bool = False) -> dict[str, torch.Tensor]:
        """The tensors of the version at `locator`, on `device`, verified against
        `expected_digest` when given. `zero_copy=True` (CPU only) returns tensors that view the
        transport's memory instead of a private copy; see the transport for their lifetime.

        Raises WeightVersionUnavailable (released or never published), WeightFormatError
        (unreadable bytes), WeightDigestMismatch, or ValueError for a locator this transport
        does not handle."""
        self._check_open(locator)
        device = torch.device(device)
        if zero_copy and device.type != "cpu":
            raise ValueError("zero_copy=True only applies to device='cpu'")
        version, tensors = self._read(locator, zero_copy=zero_copy)
        if expected_digest is not None:
            actual = weights_digest(tensors)
            if actual != expected_digest:
                raise WeightDigestMismatch(locator=locator, version=version,
                                           expected=expected_digest, actual=actual)
        return tensors if device.type == "cpu" else move_to(tensors, device)

    def release(self, locator: str) -> None:
        """Free the version at `locator`; later loads of it fail. Releasing twice is a no-op."""
        self._retained = collections.deque(p for p in self._retained if p.locator != locator)
        self._release(locator)

    @property
    def retained(self) -> tuple[Published, ...]:
        """The versions this instance published and still holds, oldest first."""
        return tuple(self._retained)

    # --- for subclasses -------------------------------------------------------------------------
    @abc.abstractmethod
    def _publish(self, version: int, tensors: Mapping[str, torch.Tensor]) -> Published: ...

    def _begin_publish(self, version: int, tensors: Mapping[str, torch.Tensor]
                       ) -> concurrent.futures.Future[Published]:
        """Copy the version out of `tensors` before returning; the future gives its Published
        once the digest is known. Default: all of `_publish` now."""
        return done_future(self._publish(version, tensors))

    @abc.abstractmethod
    def _read(self, locator: str, *, zero_copy: bool) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, CPU tensors); raises WeightTransportError subclasses naming the locator."""

    @abc.abstractmethod
    def _release(self, locator: str) -> None: ...

    def _check_open(self, locator: str) -> None:
        if self._closed:
            raise WeightTransportClosed(f"{type(self).__name__} is closed", locator=locator)

    def _split(self, locator: str) -> str:
        """The part of `locator` after `<name>://`; raises ValueError for another transport's."""
        m = _LOCATOR.match(locator)
        if m is None or m["scheme"] != self.name:
            raise ValueError(f"{locator!r} is not a {self.name}:// locator")
        return m["rest"]


def move_to(tensors: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy tensors to `device` one storage at a time: tensors that view one buffer (a loaded
    segment) cost a single transfer, and tied tensors stay tied."""
    moved: dict[int, torch.UntypedStorage] = {}
    out = {}
    for name, t in tensors.items():
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in moved:
            moved[key] = (storage.to(device=device) if storage.nbytes()
                          else torch.UntypedStorage(0, device=device))
        out[name] = torch.empty(0, dtype=t.dtype, device=device).set_(
            moved[key], t.storage_offset(), t.shape, t.stride())
    return out
