"""`streamrl scale RUN --producers N`: change how many producers a running run has.

    streamrl scale tiny-20261125-101500 --producers 4
    streamrl scale --producers 1                      # the newest `streamrl up`

The request is an event (`ScaleRequested`) on the run's events stream; the run's supervisor
follows that stream and hands the prompts partitions over to the new membership (local processes
or Ray actors). The trainer keeps going. Under docker compose the producer service is scaled too.
The command waits until the supervisor reports the new membership (`--no-wait` to skip).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from streamrl import aio
from streamrl.launch import compose
from streamrl.launch.state import UP_FILE, add_run_arguments, chosen_run, processes, up_info
from streamrl.launch.supervisor import write_json
from streamrl.log import open_log
from streamrl.recipe.context import load_run_context
from streamrl.schemas import ScaleRequested, encode_event


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--producers", type=int, required=True, help="the number of producers wanted")
    p.add_argument("--no-wait", action="store_true", help="return once the request is logged")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait (default 180)")


def run(args: argparse.Namespace) -> int:
    if (chosen := chosen_run(args)) is None:
        return 2
    runs_dir, run_id = chosen
    up = up_info(runs_dir, run_id) or {}
    state = processes(runs_dir, run_id) or {}
    log_url = up.get("log") or state.get("log") or args.log  # not started here: --log says
    try:
        aio.run(request(log_url, run_id, args.producers))
    except (LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if up.get("mode") == "compose":
        try:
            compose.check_engine()
        except compose.NoDockerEngine as error:
            print(f"error: the run runs under docker compose, but {error}", file=sys.stderr)
            return 2
        # the producers' --num-producers changes, so every replica is replaced. Stop them all
        # first (each hands its partitions over on SIGUSR1, the service's stop signal), then
        # start the new membership: compose alone recreates replicas one by one, and a new
        # replica would own partitions an old one still runs (groups published twice). The
        # trainer keeps going.
        up = {**up, "producers": args.producers}
        write_json(runs_dir / run_id / UP_FILE, up)  # later compose calls see the new count
        env = compose.compose_env(up)
        if (code := compose.compose("stop", "producer", env=env)) != 0:
            return code
        return compose.compose("up", "-d", "--no-deps", "--scale", f"producer={args.producers}",
                               "producer", env=env)
    print(f"run {run_id}: asked for {args.producers} producers (log {log_url})")
    if args.no_wait:
        return 0
    return wait_for(runs_dir, run_id, args.producers, args.timeout)


async def request(log_url: str, run_id: str, num_producers: int) -> None:
    async with open_log(log_url, writer_id=f"{run_id}-scale") as log:
        ctx = await load_run_context(log, run_id, timeout_s=5.0)
        limit = ctx.config.rollout.max_producers
        if not 0 <= num_producers <= limit:
            raise ValueError(f"--producers must be in [0, {limit}] (the run's "
                             "rollout.max_producers: its prompts stream has that many partitions)")
        await log.append(ctx.streams.events, encode_event(ScaleRequested(
            run_id=run_id, num_producers=num_producers, requested_by="streamrl scale")))


def wait_for(runs_dir: Path, run_id: str, num_producers: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = processes(runs_dir, run_id) or {}
        producers = [m for m in state.get("members", []) if m["role"] == "producer"]
        if (state.get("num_producers") == num_producers and len(producers) == num_producers
                and all(m["status"] == "running" for m in producers)):  # joined, working
            print(f"run {run_id}: {num_producers} producers running")
            return 0
        if state.get("status") not in (None, "running"):
            print(f"error: run {run_id} is {state['status']}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(f"error: run {run_id} did not reach {num_producers} producers in {timeout_s:.0f} s "
          f"(is its supervisor running? `streamrl ps {run_id}`)", file=sys.stderr)
    return 1
