"""Following the weights stream: each announced version is loaded through its transport between
decoding steps and acknowledged with `WeightVersionLoaded`."""

from __future__ import annotations

import asyncio
import time

from streamrl.hooks.engine import Engine
from streamrl.log import Log
from streamrl.schemas import WeightVersionAnnounced, WeightVersionLoaded, decode_event, encode_event
from streamrl.streams import RunStreams
from streamrl.weights import WeightTransport, WeightVersionUnavailable, open_transport
from streamrl.weights.inline import INLINE, load_inline

MAX_UNREADABLE = 8  # versions in a row; a producer slower than keep_last steps loses a few


class WeightsUnreachable(RuntimeError):
    """Announced weight versions keep failing to load: the transport does not reach here."""


class WeightSync:
    def __init__(self, log: Log, run_id: str, producer_id: str,
                 transport: str | None = None) -> None:
        """`transport`: the run's configured kind, started now rather than on the first
        announcement (a process-group transport must join its group before the trainer can
        publish anything through it)."""
        self.log = log
        self.run_id = run_id
        self.producer_id = producer_id
        self.stream = RunStreams(run_id).weights
        self.offset = 0
        self.latest: WeightVersionAnnounced | None = None  # newest announcement seen
        self._transports: dict[str, WeightTransport] = {}
        self.unreadable = 0  # versions in a row that could not be loaded
        self.last_load_s: float | None = None  # the last load's time (the metrics endpoint)
        if transport is not None:
            self._transport(transport).start()

    @property
    def trainer_version(self) -> int:
        return self.latest.version if self.latest is not None else 0

    async def poll(self, timeout_s: float = 0.0) -> bool:
        """Read new announcements (waiting up to `timeout_s` for one); True if any arrived."""
        records = await self.log.read(self.stream, 0, self.offset, timeout_s=timeout_s)
        for record in records:
            self.offset = record.offset + 1
            event = decode_event(record.value, "weights")
            if self.latest is None or event.version > self.latest.version:
                self.latest = event
        return bool(records)

    async def apply(self, engine: Engine) -> None:
        """Load the newest announced version into `engine` if it is newer than what it holds."""
        await self.poll()
        target = self.latest
        if target is None or target.version <= engine.version:
            return
        t0 = time.perf_counter()
        if target.transport == INLINE:  # the tensors are in the announcement (a LoRA adapter)
            engine.load_weights(await asyncio.to_thread(load_inline, target), target.version)
        else:
            transport = self._transport(target.transport)
            try:
                # an FP8 version: the transport holds the quantized tensors (weights/fp8.py)
                tensors = await asyncio.to_thread(
                    transport.load, target.locator,
                    expected_digest=target.quantized_digest or target.digest)
            except WeightVersionUnavailable as error:
                self._unreadable(target, error)
                return  # released already: a newer announcement is on its way
            self.unreadable = 0
            engine.load_weights(tensors, target.version)
            del tensors
            transport.done(target.locator)  # cuda_ipc: the ring slot may be reused now
        self.last_load_s = time.perf_counter() - t0
        load_ms = int(self.last_load_s * 1000)
        await self.log.append(RunStreams(self.run_id).events, encode_event(WeightVersionLoaded(
            run_id=self.run_id, producer_id=self.producer_id, version=target.version,
            load_ms=load_ms)), key=self.producer_id.encode())

    def _unreadable(self, target: WeightVersionAnnounced, error: Exception) -> None:
        """A version the trainer released is normal for a slow producer; the newest one being
        unreadable again and again is not: the trainer's transport does not reach this process
        (e.g. `shm` across containers or machines). Say so rather than generate with old weights
        forever."""
        self.unreadable += 1
        if self.unreadable >= MAX_UNREADABLE:
            raise WeightsUnreachable(
                f"{self.producer_id}: the last {self.unreadable} weight versions announced "
                f"(newest {target.version}, transport {target.transport!r}, locator "
                f"{target.locator}) could not be loaded here: {error}. The trainer's transport "
                "does not reach this process; across containers or machines use [weights] "
                "transport = \"file\" on a shared filesystem (or \"broadcast\")")

    def _transport(self, kind: str) -> WeightTransport:
        """A reader-only transport per kind, opened on first use."""
        if kind not in self._transports:
            self._transports[kind] = open_transport(kind)
        return self._transports[kind]

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()
