"""The interface every way of starting a run's processes implements, and what `ps` shows.

A launcher starts one trainer and producers by index; the supervisor (`supervisor.py`) decides
which producers exist. Producer `index` of `num_producers` owns the prompts partitions
`owned_partitions(index, num_producers, ...)`; the supervisor never runs two producers that own
the same partition at once (it stops the old membership before it starts the new one).
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

Role = Literal["trainer", "producer"]


class LaunchError(RuntimeError):
    """A run's process failed for good (exited with an error, or exhausted its restarts)."""


class Member(msgspec.Struct, kw_only=True):
    """One process of a run, as `streamrl ps` lists it."""

    role: Role
    index: int = 0  # producer index (0 for the trainer)
    num_producers: int = 0  # the membership size the producer was started with
    pid: int | None = None  # None while unknown (a Ray actor still starting)
    host: str = ""
    status: str = "running"  # running | restarting | exited(N) | stopped
    restarts: int = 0


class Launcher(Protocol):
    """Starts and stops a run's processes. Every method may be called from one asyncio task only."""

    kind: str  # "local", "ray", "compose"

    async def start_trainer(self) -> None: ...

    async def start_producer(self, index: int, num_producers: int) -> None: ...

    async def stop_producer(self, index: int) -> None:
        """Stop producer `index` gracefully and return once it has exited: its last committed
        prompt positions are then final, so the next owner of its partitions can start."""
        ...

    async def trainer_exit_code(self) -> int | None:
        """The trainer's exit code once it has finished, else None; raises `LaunchError` when a
        process failed for good."""
        ...

    async def members(self) -> list[Member]: ...

    async def close(self) -> None:
        """Stop everything still running (the trainer too) and release resources; idempotent."""
        ...
