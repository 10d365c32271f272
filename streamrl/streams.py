"""A run's streams: one namespace per run, five streams, named `<run_id>.<kind>`.

| kind         | written by          | read by                  | payload                          |
|--------------|---------------------|--------------------------|----------------------------------|
| prompts      | run driver          | producers (one group)    | Prompt events (msgpack)          |
| trajectories | producers           | trainer, audit, metrics  | Arrow IPC record batches         |
| weights      | trainer             | producers, audit         | WeightVersionAnnounced (msgpack) |
| events       | everyone            | audit, replay            | lifecycle + lineage (msgpack)    |
| dlq          | whoever rejects     | operators                | DeadLetter: reason + original    |
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

# Kafka topic names allow [a-zA-Z0-9._-]; the dot separates run and kind, so run ids have none.
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


class StreamKind(StrEnum):
    PROMPTS = "prompts"
    TRAJECTORIES = "trajectories"
    WEIGHTS = "weights"
    EVENTS = "events"
    DLQ = "dlq"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ValueError(
            f"run id {run_id!r} is not valid: use 1-200 letters, digits, '_' or '-' (no dots)"
        )
    return run_id


class RunStreams(NamedTuple):
    """The stream names of one run."""

    run_id: str

    def name(self, kind: StreamKind) -> str:
        return f"{check_run_id(self.run_id)}.{kind.value}"

    @property
    def prompts(self) -> str:
        return self.name(StreamKind.PROMPTS)

    @property
    def trajectories(self) -> str:
        return self.name(StreamKind.TRAJECTORIES)

    @property
    def weights(self) -> str:
        return self.name(StreamKind.WEIGHTS)

    @property
    def events(self) -> str:
        return self.name(StreamKind.EVENTS)

    @property
    def dlq(self) -> str:
        return self.name(StreamKind.DLQ)

    def all(self) -> dict[StreamKind, str]:
        return {kind: self.name(kind) for kind in StreamKind}


def parse_stream(stream: str) -> tuple[str, StreamKind]:
    """Split `<run_id>.<kind>` into its parts; a clear error for anything else."""
    run_id, dot, kind = stream.rpartition(".")
    if not dot:
        raise ValueError(f"stream {stream!r} is not of the form <run_id>.<kind>")
    try:
        return check_run_id(run_id), StreamKind(kind)
    except ValueError:
        kinds = ", ".join(k.value for k in StreamKind)
        raise ValueError(f"stream {stream!r}: kind {kind!r} is not one of {kinds}") from None


# Which producer owns which prompts partitions: a pure function of (index, number of producers,
# number of partitions), so any process, replay or audit computes the same owner for a prompt.
# The prompts stream has `rollout.max_producers` partitions, so every member of up to that many
# producers owns at least one partition.
def owned_partitions(index: int, num_producers: int, num_partitions: int) -> list[int]:
    """Partitions p with p % num_producers == index: round robin, so members differ by at most one
    partition and the prompts (published round robin over partitions) stay in order."""
    if not 0 <= index < num_producers:
        raise ValueError(f"producer index {index} is not in [0, {num_producers})")
    if num_producers > num_partitions:
        raise ValueError(f"{num_producers} producers but the prompts stream has only "
                         f"{num_partitions} partitions: raise rollout.max_producers")
    return [p for p in range(num_partitions) if p % num_producers == index]
