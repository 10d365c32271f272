"""`streamrl ps [RUN]`: a run's processes and their status (default: the newest `streamrl up`).

    streamrl ps
    streamrl ps tiny-20261125-101500 --runs-dir runs

Reads runs/<run_id>/processes.json, which the run's supervisor keeps current, and checks each
local pid against the OS; in compose mode it shows `docker compose ps`.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.table import Table

from streamrl.launch import compose
from streamrl.launch.state import add_run_arguments, chosen_run, is_ours, processes, up_info


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    if (chosen := chosen_run(args)) is None:
        return 2
    runs_dir, run_id = chosen
    up = up_info(runs_dir, run_id) or {}
    if up.get("mode") == "compose":
        try:
            compose.check_engine()
        except compose.NoDockerEngine as error:
            print(f"error: run {run_id} runs under docker compose, but {error}", file=sys.stderr)
            return 2
        return compose.compose("ps", env=compose.compose_env(up))
    state = processes(runs_dir, run_id)
    if state is None:
        print(f"error: run {run_id} has no {runs_dir / run_id / 'processes.json'}: it was not "
              "started here, or has not started yet", file=sys.stderr)
        return 2
    Console().print(table(run_id, up, state))
    return 0


def table(run_id: str, up: dict, state: dict) -> Table:
    supervisor = state.get("supervisor_pid")
    alive = is_ours(supervisor)
    age = time.time() - state.get("updated_ms", 0) / 1000
    t = Table(title=f"run {run_id}: {state.get('mode')} mode, log {state.get('log')}, "
                    f"{state.get('num_producers')} producers, run {state.get('status')}"
                    f"{'' if alive else ' (supervisor gone)'}, updated {age:.0f} s ago",
              title_justify="left")
    for column in ("role", "index", "pid", "host", "status", "restarts"):
        t.add_column(column)
    t.add_row("supervisor", "", str(supervisor), "", "running" if alive else "gone", "")
    for m in state.get("members", []):
        status = m["status"]
        if state.get("mode") == "local" and status == "running" and not is_ours(m.get("pid")):
            status = "gone"
        t.add_row(m["role"], str(m["index"]) if m["role"] == "producer" else "",
                  str(m.get("pid") or "-"), m.get("host", ""), status, str(m.get("restarts", 0)))
    return t
