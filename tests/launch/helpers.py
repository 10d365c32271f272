"""Helpers for the launch tests: recipes whose rollouts wait at a gate the test opens, and what a
user checks after a run whose processes came and went: every prompt's group trained at most once,
lineage intact. The CLI as a subprocess is tests/helpers.py's `streamrl`."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from streamrl.audit import audit_run
from streamrl.consumers.trainer.resume import read_history
from streamrl.hooks.rollout import RolloutInput, RolloutSample
from streamrl.log import Log
from streamrl.producers.rollout import sample_n
from streamrl.recipe.context import RunContext
from streamrl.schemas import (
    ProducerJoined,
    ProducerLeft,
    TrainStep,
    decode_event,
    decode_trajectories,
)
from tests.helpers import TINY


def recipe_with(tmp_path: Path, extra: str, name: str = "recipe.toml") -> Path:
    """tests/run/tiny.toml plus extra TOML (e.g. a [placement] section)."""
    path = tmp_path / name
    path.write_text(TINY.read_text() + "\n" + extra)
    return path


def wait_state(path: Path, ok: Callable[[dict], bool], timeout_s: float = 300.0) -> dict:
    """Poll a processes.json until `ok(state)`; fail with the last state seen."""
    deadline, state = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            state = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        if state and ok(state):
            return state
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting on {path}: {state}")


async def num_versions(log: Log, ctx: RunContext) -> int:
    events = [decode_event(r.value, "events") for r in await log.read_all(ctx.streams.events)]
    return sum(isinstance(e, TrainStep) for e in events)


async def membership(log: Log, ctx: RunContext) -> list[tuple[str, str, int]]:
    """(joined|left, producer id, pid) in log order."""
    out = []
    for r in await log.read_all(ctx.streams.events):
        event = decode_event(r.value, "events")
        if isinstance(event, ProducerJoined):
            out.append(("joined", event.producer_id, event.pid))
        elif isinstance(event, ProducerLeft):
            out.append(("left", event.producer_id, event.pid))
    return out


async def check_trained_at_most_once(log: Log, ctx: RunContext,
                                     allow: frozenset[str] = frozenset()) -> int:
    """Every sample, group and prompt in at most one batch, and `streamrl audit` clean but for
    the violation codes in `allow`; returns the number of batches."""
    history = await read_history(log, ctx)
    rows: dict[str, tuple[str, str]] = {}  # sample id -> (group id, prompt id)
    for record in await log.read_all(ctx.streams.trajectories):
        table = decode_trajectories(record.value)
        for sid, gid, pid in zip(table["sample_id"].to_pylist(), table["group_id"].to_pylist(),
                                 table["prompt_id"].to_pylist(), strict=True):
            rows[sid] = (gid, pid)
    trained = [sid for b in history.batches for sid in b.sample_ids]
    assert len(trained) == len(set(trained)), "a sample was trained twice"
    group_batches = {(rows[sid][0], b.batch_id) for b in history.batches for sid in b.sample_ids}
    groups = Counter(g for g, _ in group_batches)
    assert all(n == 1 for n in groups.values()), "a group was split over batches or trained twice"
    prompts = Counter(rows[sid][1] for sid in trained)
    per_group = ctx.config.data.samples_per_prompt
    assert all(n == per_group for n in prompts.values()), "a prompt was trained twice"
    report = await audit_run(log, ctx.run_id)
    violations = [(v.code, v.message) for v in report.violations if v.code not in allow]
    assert not violations, violations[:5]
    return len(history.batches)




async def gated_rollout(inp: RolloutInput) -> list[RolloutSample]:
    """The default rollout behind a ticket gate, so a test decides how far a run may get while it
    scales or kills processes. STREAMRL_TEST_GATE names a folder: `limit` holds how many rollouts
    may start in total (no file: no limit), each one that starts appends a byte to `used`.
    Waiting is async, so a held producer still stops promptly on SIGTERM."""
    gate = Path(os.environ["STREAMRL_TEST_GATE"])
    while True:  # a few rollouts may overshoot a limit when producers race: fine for tests
        limit = gate / "limit"
        if not limit.exists() or _used(gate) < int(limit.read_text()):
            break
        await asyncio.sleep(0.1)
    with (gate / "used").open("ab") as used:
        used.write(b"x")
    return await sample_n(inp)


def _used(gate: Path) -> int:
    try:
        return (gate / "used").stat().st_size
    except FileNotFoundError:
        return 0


class Gate:
    """The test's side of `gated_rollout`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def allow(self, more: int) -> None:
        """Let `more` rollouts start beyond those already started."""
        (self.folder / "limit").write_text(str(_used(self.folder) + more))

    def open(self) -> None:
        (self.folder / "limit").unlink(missing_ok=True)

    @property
    def used(self) -> int:
        return _used(self.folder)


def gated_recipe(tmp_path: Path, extra: str = "", name: str = "gated.toml") -> Path:
    path = recipe_with(tmp_path, extra, name)
    text = path.read_text().replace(
        'reward = "tests.run.tiny_task:reward"',
        'reward = "tests.run.tiny_task:reward"\nrollout = "tests.launch.helpers:gated_rollout"')
    path.write_text(text)
    return path


async def produced_by(log: Log, ctx: RunContext) -> Counter[str]:
    """Trajectory rows per producer id."""
    return Counter(p for r in await log.read_all(ctx.streams.trajectories)
                   for p in decode_trajectories(r.value)["producer_id"].to_pylist())
