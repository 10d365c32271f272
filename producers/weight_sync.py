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
                tensors = await asyncio.to_thread(transport.load, target.locator,
                                                  expected_digest=target.digest)
            except WeightVersionUnavailable:
                return  # released already: a newer announcement is on its way
            engine.load_weights(tensors, target.version)
            del tensors
            transport.done(target.locator)  # cuda_ipc: the ring slot may be reused now
        load_ms = int((time.perf_counter() - t0) * 1000)
        await self.log.append(RunStreams(self.run_id).events, encode_event(WeightVersionLoaded(
            run_id=self.run_id, producer_id=self.producer_id, version=target.version,
            load_ms=load_ms)), key=self.producer_id.encode())

    def _transport(self, kind: str) -> WeightTransport:
        """A reader-only transport per kind, opened on first use."""
        if kind not in self._transports:
            self._transports[kind] = open_transport(kind)
        return self._transports[kind]

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()
