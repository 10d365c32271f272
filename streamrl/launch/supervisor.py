"""The supervisor loop of a run, whatever starts its processes:

    start the trainer and rollout.num_producers producers
    until the trainer has finished:
        on ScaleRequested(N) in the events stream: hand the prompts partitions over to N producers
        record the processes in runs/<run_id>/processes.json (what `streamrl ps` and `down` read)
        when the prompts can make no further version: end with PromptsExhausted (exhaustion.py)

A handover stops every producer of the old membership (each commits its prompt positions with its
last published group, then exits) before the new membership starts from the committed positions:
no partition has two owners at once, and no prompt is skipped. Groups a stopped producer had not
finished are generated again by the partition's next owner; the trainer drops a group whose ids
it has already trained (ids derive from the prompt's position).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import msgspec

from streamrl.launch.base import Launcher
from streamrl.launch.exhaustion import PromptsExhausted, exhausted_state, latest_version
from streamrl.launch.membership import EventFollower
from streamrl.log import Log
from streamrl.recipe.context import RunContext

STATE_FILE = "processes.json"
STATE_EVERY_S = 2.0
EXHAUSTED_EVERY_S = 5.0  # how often the supervisor checks; the state must hold this long


class Supervisor:
    def __init__(self, log: Log, ctx: RunContext, launcher: Launcher, log_url: str) -> None:
        self.log, self.ctx, self.launcher, self.log_url = log, ctx, launcher, log_url
        self.events = EventFollower(log, ctx.streams.events)
        self.num_producers = 0
        self.state_path = ctx.run_dir / STATE_FILE
        self.last_state = 0.0
        self.exhausted_every_s = EXHAUSTED_EVERY_S
        self.last_exhausted_check = time.monotonic()
        self.exhausted: tuple[int, ...] | None = None  # the state seen at the last check

    async def start(self) -> None:
        await self.launcher.start_trainer()
        await self.scale(self.ctx.config.rollout.num_producers)

    async def scale(self, num_producers: int) -> None:
        """Stop the old membership, then start the new one (see the module docstring)."""
        limit = self.ctx.config.rollout.max_producers
        num_producers = max(0, min(num_producers, limit))  # `streamrl scale` checked it already
        if num_producers == self.num_producers:
            return
        await asyncio.gather(*(self.launcher.stop_producer(i) for i in range(self.num_producers)))
        self.num_producers = 0
        for index in range(num_producers):
            await self.launcher.start_producer(index, num_producers)
        self.num_producers = num_producers
        await self.write_state(force=True)

    async def step(self) -> int | None:
        """One round: act on scale requests, refresh the state file; the trainer's exit code once
        it has finished. Raises `LaunchError` when a process failed for good."""
        request = await self.events.poll()
        if request is not None:
            await self.scale(request.num_producers)
        await self.write_state()
        code = await self.launcher.trainer_exit_code()
        if code is None:
            await self.check_exhausted()
        return code

    async def check_exhausted(self) -> None:
        """Raise `PromptsExhausted` once the run's prompts can make no further version and
        that state held over one check interval (exhaustion.py)."""
        if time.monotonic() - self.last_exhausted_check < self.exhausted_every_s:
            return
        self.last_exhausted_check = time.monotonic()
        state = await exhausted_state(self.log, self.ctx)
        if state is not None and state == self.exhausted and (
                version := await latest_version(self.log, self.ctx)
        ) < self.ctx.config.run.max_versions:  # else: the trainer is saving its last version
            raise PromptsExhausted(
                f"prompts exhausted at version {version} (max_versions "
                f"{self.ctx.config.run.max_versions}): the run's prompts are all generated and "
                f"fewer than batch_size {self.ctx.config.trainer.batch_size} samples remain "
                "untrained; raise data.num_prompts (or data.epochs) or lower run.max_versions")
        self.exhausted = state

    async def write_state(self, *, force: bool = False, status: str = "running") -> None:
        if not force and time.monotonic() - self.last_state < STATE_EVERY_S:
            return
        self.last_state = time.monotonic()
        members = await self.launcher.members()
        for m in members:  # a producer counts as running once it has joined (ProducerJoined)
            if m.role == "producer" and m.status == "running" and m.pid not in self.events.joined:
                m.status = "starting"
        write_json(self.state_path, {
            "run_id": self.ctx.run_id, "mode": self.launcher.kind, "log": self.log_url,
            "supervisor_pid": os.getpid(), "status": status, "num_producers": self.num_producers,
            "updated_ms": int(time.time() * 1000), "members": msgspec.to_builtins(members)})

    async def close(self, status: str) -> None:
        await self.launcher.close()
        await self.write_state(force=True, status=status)


def write_json(path: Path, data: object) -> None:
    """Atomically (write a temporary file, then rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
