"""`streamrl down [RUN]`: stop a run started with `streamrl up` (default: the newest).

    streamrl down
    streamrl down tiny-20261125-101500

Local mode: SIGTERM to the run's supervisor, which stops the producers and the trainer (each
commits what it finished; the log keeps everything, so `streamrl run --run ID` is not needed to
inspect it later), then waits until none of the run's processes is left, killing stragglers
after `--timeout` seconds. Compose mode: `docker compose down` (volumes kept unless `--volumes`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from streamrl.launch import compose
from streamrl.launch.state import add_run_arguments, chosen_run, run_pids, signal_ours, up_info


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--timeout", type=float, default=90.0, help="seconds before SIGKILL")
    p.add_argument("--volumes", action="store_true", help="compose: also remove the volumes")


def run(args: argparse.Namespace) -> int:
    if (chosen := chosen_run(args)) is None:
        return 2
    runs_dir, run_id = chosen
    up = up_info(runs_dir, run_id)
    if up is None:
        print(f"error: run {run_id} was not started with `streamrl up` in {runs_dir}",
              file=sys.stderr)
        return 2
    if up["mode"] == "compose":
        try:
            compose.check_engine()
        except compose.NoDockerEngine as error:
            print(f"error: run {run_id} runs under docker compose, but {error}", file=sys.stderr)
            return 2
        return compose.compose("down", *(["--volumes"] if args.volumes else []),
                               env=compose.compose_env(up))
    return stop_local(runs_dir, run_id, up, args.timeout)


def stop_local(runs_dir: Path, run_id: str, up: dict, timeout_s: float) -> int:
    pids = run_pids(runs_dir, run_id)
    if not pids:
        print(f"run {run_id}: no process left")
        return 0
    signal_ours(up.get("pid"), signal.SIGTERM)  # the supervisor stops its children itself
    deadline = time.monotonic() + timeout_s
    while (left := run_pids(runs_dir, run_id)) and time.monotonic() < deadline:
        time.sleep(0.25)
    killed = [pid for pid in left if signal_ours(pid, signal.SIGKILL)]
    if killed:
        print(f"run {run_id}: killed {killed} after {timeout_s:.0f} s", file=sys.stderr)
    print(f"run {run_id}: stopped {len(pids)} processes")
    return 0
