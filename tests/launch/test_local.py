"""`streamrl up --local` / `ps` / `scale` / `down` for real: local processes on the file log.

Scaling hands the prompts partitions over between memberships while the trainer keeps going;
nothing may be trained twice and the run must still finish. `down` must leave no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from streamrl import aio
from streamrl.launch.state import is_ours
from streamrl.log import open_log
from streamrl.recipe.context import load_run_context
from tests.helpers import TINY, streamrl, wait_until
from tests.launch.helpers import (
    Gate,
    check_trained_at_most_once,
    gated_recipe,
    membership,
    num_versions,
    produced_by,
    recipe_with,
    wait_state,
)


def _versions(log_url: str, run_id: str) -> int:
    async def count() -> int:
        async with open_log(log_url) as log:
            return await num_versions(log, await load_run_context(log, run_id))
    return aio.run(count())


def _wait_versions(log_url: str, run_id: str, n: int, timeout_s: float = 300.0) -> None:
    wait_until(lambda: _versions(log_url, run_id) >= n, f"run {run_id} reached {n} versions",
               timeout_s)


def test_scale_1_2_1_during_a_run_trains_every_prompt_at_most_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log_url, runs = str(tmp_path / "log"), str(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")  # rollouts start only as the test allows: no early end
    gate.allow(4)  # 4 groups of 4 samples: 2 versions
    monkeypatch.setenv("STREAMRL_TEST_GATE", str(gate.folder))
    up = streamrl("up", "--local", "--recipe", str(gated_recipe(tmp_path)), "--log", log_url,
                  "--runs-dir", runs, "--run", "scaled", "--max-versions", "12")
    assert up.returncode == 0, up.stdout + up.stderr
    ps = streamrl("ps", "--runs-dir", runs)
    assert ps.returncode == 0 and "trainer" in ps.stdout and "producer" in ps.stdout, ps.stdout
    state_path = Path(runs) / "scaled" / "processes.json"
    _wait_versions(log_url, "scaled", 1)

    out = streamrl("scale", "scaled", "--producers", "2", "--runs-dir", runs)
    assert out.returncode == 0, out.stdout + out.stderr
    state = json.loads(state_path.read_text())
    assert [m["index"] for m in state["members"] if m["role"] == "producer"] == [0, 1]
    trainer_pid = next(m["pid"] for m in state["members"] if m["role"] == "trainer")
    # The new member works. The old one is frozen meanwhile: its rollouts, already waiting at
    # the gate, would otherwise take every ticket while the new process starts and could
    # finish the run alone (seen under CI load).
    old_pid = next(m["pid"] for m in state["members"]
                   if m["role"] == "producer" and m["index"] == 0)
    os.kill(old_pid, signal.SIGSTOP)
    try:
        _wait_produced(log_url, "scaled", "producer-1", gate)
    finally:
        os.kill(old_pid, signal.SIGCONT)
    assert _versions(log_url, "scaled") < 12

    out = streamrl("scale", "scaled", "--producers", "1", "--runs-dir", runs)
    assert out.returncode == 0, out.stdout + out.stderr
    gate.open()
    final = wait_state(state_path, lambda s: s["status"] != "running")
    assert final["status"] == "finished", final
    # the trainer kept going through both handovers: one process from start to end
    assert next(m["pid"] for m in final["members"] if m["role"] == "trainer") == trainer_pid

    async def check() -> None:
        async with open_log(log_url) as log:
            ctx = await load_run_context(log, "scaled")
            assert ctx.config.rollout.max_producers == 16
            assert await log.num_partitions(ctx.streams.prompts) == 16
            assert await check_trained_at_most_once(log, ctx) == 12
            members = await membership(log, ctx)
            # 1 producer, then 2 (producer-0 restarted with half the partitions), then 1 again
            assert [m[:2] for m in members if m[1] == "producer-1"] == [
                ("joined", "producer-1"), ("left", "producer-1")]
            assert sum(m[:2] == ("joined", "producer-0") for m in members) == 3

    aio.run(check())
    down = streamrl("down", "--runs-dir", runs)
    assert down.returncode == 0 and "no process left" in down.stdout, down.stdout + down.stderr


def _wait_produced(log_url: str, run_id: str, producer_id: str, gate: Gate,
                   timeout_s: float = 300) -> None:
    """Allow rollouts a few at a time until `producer_id` has published a group. Nothing is
    allowed before it has joined: the other producer would otherwise take every rollout while
    the new process starts (tens of seconds on a loaded machine) and finish the run alone."""
    async def joined() -> bool:
        async with open_log(log_url) as log:
            members = await membership(log, await load_run_context(log, run_id))
            return ("joined", producer_id) in [m[:2] for m in members]

    async def count() -> int:
        async with open_log(log_url) as log:
            return (await produced_by(log, await load_run_context(log, run_id)))[producer_id]

    def published() -> bool:
        if aio.run(count()):
            return True
        if gate.used >= int((gate.folder / "limit").read_text()):
            gate.allow(4)
        return False
    deadline = time.monotonic() + timeout_s
    wait_until(lambda: aio.run(joined()), f"{producer_id} joined", timeout_s)
    wait_until(published, f"{producer_id} published", deadline - time.monotonic())


def test_up_ps_down_leaves_no_process(tmp_path: Path) -> None:
    log_url, runs = str(tmp_path / "log"), str(tmp_path / "runs")
    up = streamrl("up", "--local", "--recipe", str(TINY), "--log", log_url, "--runs-dir", runs,
                  "--run", "updown", "--max-versions", "32", "--producers", "2")  # all 64 prompts
    assert up.returncode == 0, up.stdout + up.stderr
    assert (Path(runs) / "current").read_text().strip() == "updown"
    ps = streamrl("ps", "--runs-dir", runs)  # the newest `up` by default
    assert ps.returncode == 0, ps.stderr
    rows = [line.split("│")[1].strip() for line in ps.stdout.splitlines() if "│" in line]
    assert rows == ["supervisor", "trainer", "producer", "producer"], ps.stdout
    state = json.loads((Path(runs) / "updown" / "processes.json").read_text())
    pids = [state["supervisor_pid"], *(m["pid"] for m in state["members"])]
    assert len(pids) == 4 and all(is_ours(p) for p in pids)

    down = streamrl("down", "--runs-dir", runs)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped 4 processes" in down.stdout
    assert not any(is_ours(p) for p in pids), "down left a process running"
    assert json.loads((Path(runs) / "updown" / "processes.json").read_text())["status"] == "stopped"
    ps = streamrl("ps", "--runs-dir", runs)
    assert "supervisor gone" in ps.stdout


def test_scale_refuses_more_producers_than_partitions(tmp_path: Path) -> None:
    log_url = str(tmp_path / "log")
    recipe = recipe_with(tmp_path, "")
    recipe.write_text(recipe.read_text().replace("num_producers = 1",
                                                 "num_producers = 1\nmax_producers = 2"))
    from streamrl.recipe.config import load_config
    from streamrl.run.driver import start_run

    async def start() -> None:
        async with open_log(log_url) as log:
            _, v0 = await start_run(load_config(recipe), log, "small", tmp_path / "runs",
                                    recipe=str(recipe))
            v0.close()
            assert await log.num_partitions("small.prompts") == 2

    aio.run(start())
    out = streamrl("scale", "small", "--producers", "3", "--log", log_url,
                   "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2 and "must be in [0, 2]" in out.stderr, out.stderr
