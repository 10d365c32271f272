"""The newest scale request of a run and the producers that joined it, as the supervisor follows
them. Which producer owns which prompts partitions is `streamrl.streams.owned_partitions`."""

from __future__ import annotations

import re

from streamrl.log import Log
from streamrl.schemas import ProducerJoined, ScaleRequested, decode_event


class EventFollower:
    """Follows a run's events stream for what the supervisor acts on: `poll` returns the newest
    `ScaleRequested` since the last call (older ones it supersedes are skipped), and keeps
    `joined`, the pids of producers that have written `ProducerJoined` (they are working)."""

    def __init__(self, log: Log, events_stream: str, *, offset: int = 0) -> None:
        self.log, self.stream, self.offset = log, events_stream, offset
        self.joined: set[int] = set()

    async def poll(self, timeout_s: float = 0.0) -> ScaleRequested | None:
        newest = None
        while True:
            records = await self.log.read(self.stream, 0, self.offset, max_records=512,
                                          timeout_s=timeout_s)
            if not records:
                return newest
            self.offset = records[-1].offset + 1
            for record in records:
                if not _CANDIDATE.search(record.value):  # cheap skip; decode only candidates
                    continue
                match decode_event(record.value, "events"):
                    case ScaleRequested() as event:
                        newest = event
                    case ProducerJoined(pid=pid):
                        self.joined.add(pid)
            timeout_s = 0.0


_CANDIDATE = re.compile(rb"scale_requested|producer_joined")
