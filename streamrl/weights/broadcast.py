"""Process-group weight transport: the trainer (rank 0) broadcasts each version to the engine
ranks over a dedicated process group (NCCL across GPUs, gloo on CPU).

    locator: broadcast://<group_name>/v<version:08d>

Once, when the group forms, rank 0 sends the first version the group will get (int64[1]): the
versions before it were published before every rank had joined, and loading them fails at once
instead of waiting. Per version, rank 0 sends, and every engine rank's receive thread takes:

    header   int64[2] = [version, manifest bytes]      (version -1: the sender closed)
    manifest msgpack `Manifest` (names, dtypes, shapes, offsets, bucket size; buckets.py)
    status   all-gather of one int per rank: 0, or 1 where the manifest does not match the
             receiver's model (then every rank raises ManifestMismatch; no bucket is sent)
    buckets  the version's byte stream in `bucket_bytes` slices (double-buffered on the sender:
             bucket i+1 is packed while bucket i is on the wire)
    digest   uint8[64], the hex `weights_digest` of what was sent

Receivers receive on a thread of their own (and on a side CUDA stream on GPU), so receiving
overlaps with generation; `load(locator)` then hands out the received tensors, which view one
buffer per version (no copy). Each version is still announced in the log like any other
(`Published.announce`); `load(expected_digest=...)` always compares the announced digest with the
one sent in-band, and with `verify_digest=True` rehashes the received bytes too (a full pass over
them: off by default on GPU paths that care about latency).

The group forms once every rank has joined (a TCP store at `address`, served by rank 0). The
sender forms it on a background thread; `publish` waits for it (a version nobody receives would
leave producers on old weights, and a trainer that needs fresher samples would wait forever).
With `wait_for_group=False` versions published before it formed are announced but reach nobody,
and a receiver that joins late gets the next version (loading an earlier one raises
WeightVersionUnavailable(released=True), and WeightSync moves on).
A rank that dies breaks the group: re-forming it is not implemented (see docs/multi-gpu.md).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, NamedTuple, Self

import msgspec
import torch
import torch.distributed as dist

from streamrl.weights.base import (
    Published,
    WeightDigestMismatch,
    WeightTransport,
    WeightTransportError,
    WeightVersionUnavailable,
    move_to,
)
from streamrl.weights.buckets import DEFAULT_BUCKET_BYTES, Manifest, ManifestMismatch, pack, unpack
from streamrl.weights.digest import weights_digest

if TYPE_CHECKING:
    from streamrl.weights import TransportConfig

# Environment of a process that joins a weight group (set by the launcher, see launch/env.py).
ENV_ADDRESS, ENV_RANK, ENV_WORLD, ENV_BACKEND = (
    "STREAMRL_WEIGHTS_GROUP", "STREAMRL_WEIGHTS_RANK", "STREAMRL_WEIGHTS_WORLD_SIZE",
    "STREAMRL_WEIGHTS_BACKEND")
CLOSE_WAIT_S = 10.0
_LOCATOR = re.compile(r"^(?P<group>[^/]+)/v(?P<version>\d+)$")


class Received(NamedTuple):
    tensors: dict[str, torch.Tensor]  # views of `buffer`
    digest: str  # the digest the sender sent in-band
    buffer: torch.Tensor  # the version's whole byte stream


class GroupConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Where and how the weight group forms."""

    address: str = "127.0.0.1:29531"
    """host:port of the TCP store rank 0 serves; every engine rank must reach it."""
    world_size: int
    """1 (the trainer) + the number of engine ranks."""
    rank: int
    """0 for the trainer, 1.. for engines."""
    backend: Literal["gloo", "nccl"] = "gloo"
    group_name: str = "streamrl-weights"
    timeout_s: float = 1800.0
    """How long a rank waits for the others: to join, and for the next version."""

    def __post_init__(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"weight group address {self.address!r} is not host:port")
        if not 0 <= self.rank < self.world_size or self.world_size < 2:
            raise ValueError(f"weight group rank {self.rank} of world size {self.world_size}: "
                             "need world_size >= 2 (the trainer and an engine) and 0 <= rank < it")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> GroupConfig:
        missing = [k for k in (ENV_ADDRESS, ENV_RANK, ENV_WORLD) if k not in env]
        if missing:
            raise ValueError(f"the broadcast weight transport needs {', '.join(missing)} in the "
                             "environment (the launcher sets them for disaggregated placement)")
        return cls(address=env[ENV_ADDRESS], rank=int(env[ENV_RANK]),
                   world_size=int(env[ENV_WORLD]), backend=env.get(ENV_BACKEND, "gloo"))  # type: ignore[arg-type]


def open_group(cfg: GroupConfig) -> dist.ProcessGroup:
    """Join the group (blocks until every rank has joined or `timeout_s` passes). A group of its
    own, not torch's default one: the trainer may run FSDP over another group meanwhile."""
    host, _, port = cfg.address.rpartition(":")
    timeout = timedelta(seconds=cfg.timeout_s)
    store = dist.TCPStore(host, int(port), cfg.world_size, is_master=cfg.rank == 0,
                          timeout=timeout, wait_for_workers=False)
    store = dist.PrefixStore(cfg.group_name, store)
    if cfg.backend == "gloo":
        return dist.ProcessGroupGloo(store, cfg.rank, cfg.world_size, timeout)
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, cfg.rank, cfg.world_size, opts)


class BroadcastTransport(WeightTransport):
    """Rank 0 publishes, the other ranks load; see the module docstring."""

    name = "broadcast"

    def __init__(self, group: GroupConfig | None = None, *, keep_last: int = 2,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, device: str | None = None,
                 verify_digest: bool = False, wait_for_group: bool = True,
                 expected: Mapping[str, tuple[str, tuple[int, ...]]] | None = None) -> None:
        """`wait_for_group`: `publish` waits (up to the group's timeout) until every rank has
        joined. Without it, versions published before then reach nobody; a trainer whose
        staleness policy waits for samples of those versions would then wait forever, so only
        callers that keep publishing regardless (benchmarks, tests) turn it off."""
        super().__init__(keep_last=keep_last)
        self.group = group if group is not None else GroupConfig.from_env()
        self.bucket_bytes, self.verify_digest, self.expected = bucket_bytes, verify_digest, expected
        self.wait_for_group = wait_for_group
        default = "cuda" if self.group.backend == "nccl" else "cpu"
        self.device = torch.device(device or default)
        self.pg: dist.ProcessGroup | None = None
        self.error: BaseException | None = None  # from the join or receive thread
        self.num_undelivered = 0  # versions published before the group formed
        self._ready = threading.Event()
        self._cond = threading.Condition()
        self._received: dict[int, Received] = {}
        self._refused: dict[int, BaseException] = {}  # version -> why no rank received it
        self._floor: int | None = None  # the first version sent to the formed group
        self._newest = -1  # the newest version published (sender)
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._staging: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, config: TransportConfig) -> Self:
        return cls(keep_last=config.keep_last)

    @property
    def is_sender(self) -> bool:
        return self.group.rank == 0

    def _locator(self, version: int) -> str:
        return f"broadcast://{self.group.group_name}/v{version:08d}"

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            target = self._join if self.is_sender else self._receive_loop
            self._thread = threading.Thread(target=target, daemon=True,
                                            name=f"weights-rank{self.group.rank}")
            self._thread.start()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """True once the group has formed (every rank joined)."""
        self.start()
        return self._ready.wait(timeout_s)

    def close(self) -> None:
        if self.is_sender and self.pg is not None and not self._closed and self.error is None:
            with contextlib.suppress(RuntimeError):  # a receiver already gone: nothing to tell
                self.pg.broadcast(torch.tensor([-1, 0], device=self.device), 0).wait()
        was_closed = self._closed
        super().close()
        thread = self._thread
        if not was_closed and thread is not None and thread is not threading.current_thread():
            # A receiver waits for the sender's closing header; one that leaves first (a stopped
            # engine) aborts its group, since a thread left inside a collective at interpreter
            # exit aborts the process.
            thread.join(CLOSE_WAIT_S)
            if thread.is_alive() and self.pg is not None:
                with contextlib.suppress(RuntimeError):
                    self.pg.abort()
                thread.join(CLOSE_WAIT_S)

    def _join(self) -> None:
        try:
            pg = open_group(self.group)
            with self._send_lock:  # tell the receivers which versions they will never get
                self._floor = self._newest + 1
                pg.broadcast(torch.tensor([self._floor], device=self.device), 0).wait()
                self.pg = pg
                self._ready.set()
        except BaseException as e:  # surfaced by publish/load
            self.error = e

    # --- sender ---------------------------------------------------------------------------------
    def _publish(self, version: int, tensors: Mapping[str, torch.Tensor]) -> Published:
        if not self.is_sender:
            raise ValueError(f"rank {self.group.rank} cannot publish: only rank 0 sends weights")
        self.start()
        if self.wait_for_group and not self._ready.wait(self.group.timeout_s) and \
                self.error is None:
            raise WeightTransportError(
                f"not every engine rank joined the weight group within {self.group.timeout_s} s",
                locator=self._locator(version), version=version)
        manifest = Manifest.of(tensors, bucket_bytes=self.bucket_bytes)
        if self.error is not None:
            raise WeightTransportError(f"the weight group failed: {self.error}",
                                       locator=self._locator(version), version=version)
        # Hash on another thread while the buckets are on the wire; the digest goes last.
        with concurrent.futures.ThreadPoolExecutor(1) as pool, self._send_lock:
            digest_future = pool.submit(weights_digest, tensors)
            if self._ready.is_set():
                self._send(version, manifest, tensors, digest_future)
            else:
                self.num_undelivered += 1
            digest = digest_future.result()
            self._newest = version
        return Published(version=version, locator=self._locator(version), digest=digest,
                         num_bytes=sum(e.num_bytes for e in manifest.entries),
                         transport=self.name)

    def _send(self, version: int, manifest: Manifest, tensors: Mapping[str, torch.Tensor],
              digest: concurrent.futures.Future[str]) -> None:
        pg = self.pg
        assert pg is not None
        raw = msgspec.msgpack.encode(manifest)
        pg.broadcast(torch.tensor([version, len(raw)], device=self.device), 0).wait()
        pg.broadcast(_bytes_tensor(raw, self.device), 0).wait()
        bad = _gather_status(pg, 0, self.group.world_size, self.device)
        if bad:
            raise ManifestMismatch(
                f"weight version {version}: engine rank(s) {bad} hold a model whose tensor names,"
                " dtypes or shapes differ from the trainer's (their error names them)")
        with _side_stream(self.device):
            if len(self._staging) < 2 or self._staging[0].numel() < manifest.bucket_bytes:
                self._staging = [torch.empty(manifest.bucket_bytes, dtype=torch.uint8,
                                             device=self.device) for _ in range(2)]
            works: list = [None, None]
            for i in range(manifest.num_buckets):
                if works[i % 2] is not None:
                    works[i % 2].wait()  # the buffer is free once its broadcast is done
                buf = pack(manifest, tensors, i, self._staging[i % 2])
                works[i % 2] = pg.broadcast(buf, 0)
            for work in works:
                if work is not None:
                    work.wait()
            pg.broadcast(_bytes_tensor(digest.result().encode(), self.device), 0).wait()
            _synchronize(self.device)  # the trainer may update its parameters after we return

    # --- receiver -------------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        try:
            self.pg = open_group(self.group)
            floor = torch.zeros(1, dtype=torch.int64, device=self.device)
            self.pg.broadcast(floor, 0).wait()
            with self._cond:  # versions before it were published before the group formed
                self._floor = int(floor.item())
                self._cond.notify_all()
            self._ready.set()
            with _side_stream(self.device):
                while self._receive_one(self.pg):
                    pass
        except BaseException as e:  # surfaced by load
            if not self._closed:
                self.error = e
        finally:
            with self._cond:
                self._cond.notify_all()

    def _receive_one(self, pg: dist.ProcessGroup) -> bool:
        header = torch.zeros(2, dtype=torch.int64, device=self.device)
        pg.broadcast(header, 0).wait()
        version, num_raw = (int(x) for x in header.tolist())
        if version < 0:
            return False
        raw = torch.empty(num_raw, dtype=torch.uint8, device=self.device)
        pg.broadcast(raw, 0).wait()
        mismatch: BaseException | None = None
        try:
            manifest = msgspec.msgpack.decode(raw.cpu().numpy().tobytes(), type=Manifest)
            if self.expected is not None:
                manifest.check(self.expected, where=f"weight version {version} on rank "
                                                    f"{self.group.rank}")
        except (msgspec.DecodeError, msgspec.ValidationError, ManifestMismatch) as e:
            mismatch = e
        bad = _gather_status(pg, int(mismatch is not None), self.group.world_size, self.device)
        if bad:  # nothing is sent for this version; loading it raises why; the group goes on
            with self._cond:
                self._refused[version] = mismatch or ManifestMismatch(
                    f"weight version {version} was refused by engine rank(s) {bad}: their model "
                    "differs from the trainer's")
                self._cond.notify_all()
            return True
        stream = torch.empty(manifest.total_bytes, dtype=torch.uint8, device=self.device)
        works = [pg.broadcast(stream[slice(*manifest.bucket(i))], 0)
                 for i in range(manifest.num_buckets)]
        for work in works:
            work.wait()
        sent_digest = torch.empty(64, dtype=torch.uint8, device=self.device)
        pg.broadcast(sent_digest, 0).wait()
        _synchronize(self.device)
        tensors = unpack(manifest, stream)
        with self._cond:
            self._received[version] = Received(
                tensors, sent_digest.cpu().numpy().tobytes().decode(), stream)
            for old in sorted(self._received)[: -self.keep_last]:
                del self._received[old]
            self._cond.notify_all()
        return True

    def load(self, locator: str, *, expected_digest: str | None = None,
             device: str | torch.device | None = None,
             zero_copy: bool = True) -> dict[str, torch.Tensor]:
        """The received tensors of the version at `locator` (views of its receive buffer; do not
        modify them), or copies on `device`. Waits up to the group's timeout for a version that
        has not arrived yet."""
        self._check_open(locator)
        version, got = self._wait_for(locator)
        tensors = got.tensors
        if got.buffer.is_cuda:  # used on the caller's stream: keep the block until it is done
            got.buffer.record_stream(torch.cuda.current_stream(got.buffer.device))
        if expected_digest is not None:
            actual = weights_digest(tensors) if self.verify_digest else got.digest
            if actual != expected_digest or got.digest != expected_digest:
                raise WeightDigestMismatch(locator=locator, version=version,
                                           expected=expected_digest, actual=actual)
        if device is None or torch.device(device) == self.device:
            return tensors
        return move_to(tensors, torch.device(device))

    def _read(self, locator: str, *, zero_copy: bool) -> tuple[int, dict[str, torch.Tensor]]:
        version, got = self._wait_for(locator)
        return version, got.tensors

    def _wait_for(self, locator: str) -> tuple[int, Received]:
        m = _LOCATOR.match(self._split(locator))
        if m is None or m["group"] != self.group.group_name:
            raise ValueError(f"{locator!r} is not a version of weight group "
                             f"{self.group.group_name!r}")
        version = int(m["version"])
        if self.is_sender:
            raise ValueError(f"{locator}: rank 0 sends weights; engine ranks load them")
        self.start()
        with self._cond:
            arrived = self._cond.wait_for(
                lambda: version in self._received or version in self._refused
                or self.error is not None or any(v > version for v in self._received)
                or (self._floor is not None and version < self._floor),
                timeout=self.group.timeout_s)
            if version in self._received:
                return version, self._received[version]
            if version in self._refused:
                raise self._refused[version]
            if self.error is not None:
                raise WeightTransportError(f"the weight group failed: {self.error}",
                                           locator=locator, version=version) from self.error
            late = self._floor is not None and version < self._floor
            hint = ("; it was published before this rank joined the weight group" if late
                    else "" if arrived else f"; not received within {self.group.timeout_s} s")
            raise WeightVersionUnavailable(locator=locator, version=version, released=arrived,
                                           hint=hint)

    def _release(self, locator: str) -> None:
        if not self.is_sender:
            m = _LOCATOR.match(self._split(locator))
            with self._cond:
                self._received.pop(int(m["version"]) if m else -1, None)


def _bytes_tensor(data: bytes, device: torch.device) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


def _gather_status(pg: dist.ProcessGroup, status: int, world_size: int,
                   device: torch.device) -> list[int]:
    """All ranks' status flags; returns the ranks that reported a problem."""
    out = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size)]
    pg.allgather([out], [torch.tensor([status], device=device)]).wait()
    return [rank for rank, t in enumerate(out) if int(t.item())]


@contextlib.contextmanager
def _side_stream(device: torch.device) -> Iterator[None]:
    """On CUDA: run the block on a stream of its own (ordered after the current one), so packing
    and receiving overlap with the trainer's or the engine's work; on CPU: nothing."""
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


__all__ = ["BroadcastTransport", "GroupConfig", "ManifestMismatch", "open_group"]
