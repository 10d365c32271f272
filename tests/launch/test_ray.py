"""`streamrl run --ray` on a local Ray (2 CPUs): the trainer and producers as Ray actors in a
placement group; a producer actor killed with SIGKILL mid-run is restarted by Ray, resumes from its
committed prompt positions, and the run finishes with nothing trained twice; `streamrl scale`
adds a producer actor meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamrl import aio
from streamrl.log import open_log
from streamrl.recipe.context import load_run_context
from tests.helpers import REPO, cli_env, streamrl
from tests.launch.helpers import (
    Gate,
    check_trained_at_most_once,
    gated_recipe,
    membership,
    wait_state,
)

PLACEMENT = """
[placement]
mode = "colocated"
trainer_cpus = 0.5
producer_cpus = 0.5
max_restarts = 2
"""


def test_a_killed_producer_actor_is_restarted_and_the_run_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log_url, runs = str(tmp_path / "log"), tmp_path / "runs"
    gate = Gate(tmp_path / "gate")  # hold rollouts so the kill lands mid-run
    gate.allow(4)
    monkeypatch.setenv("STREAMRL_TEST_GATE", str(gate.folder))
    recipe = gated_recipe(tmp_path, PLACEMENT)
    run = subprocess.Popen(
        [sys.executable, "-m", "streamrl.cli", "run", str(recipe), "--ray", "--log", log_url,
         "--run", "onray", "--runs-dir", str(runs), "--max-versions", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(), cwd=REPO)
    try:
        state_path = runs / "onray" / "processes.json"
        state = wait_state(state_path, lambda s: s["mode"] == "ray" and all(
            m["status"] == "running" for m in s["members"]) and len(s["members"]) == 2)
        [producer] = [m for m in state["members"] if m["role"] == "producer"]
        os.kill(producer["pid"], signal.SIGKILL)
        restarted = wait_state(state_path, lambda s: any(
            m["role"] == "producer" and m["restarts"] == 1 and m["status"] == "running"
            for m in s["members"]))
        assert restarted["status"] == "running"
        # scaling works under Ray too: a second producer actor in a placement group of its own
        out = streamrl("scale", "onray", "--producers", "2", "--runs-dir", str(runs))
        assert out.returncode == 0, out.stdout + out.stderr
        gate.open()
        out, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out[-4000:]
    assert "versions trained" in out

    async def check() -> None:
        async with open_log(log_url) as log:
            ctx = await load_run_context(log, "onray")
            # a killed producer may publish a group again; the trainer must drop the duplicate
            assert await check_trained_at_most_once(
                log, ctx, allow=frozenset({"duplicate_group"})) == 6
            members = await membership(log, ctx)
            joined = [pid for what, who, pid in members if what == "joined" and who == "producer-0"]
            # started, restarted by Ray after the kill, started again with the new membership
            assert len(joined) == 3 and joined[0] == producer["pid"] != joined[1]
            assert ("joined", "producer-1") in [m[:2] for m in members]

    aio.run(check())
