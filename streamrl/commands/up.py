"""`streamrl up`: start a run's whole topology in the background; `ps`, `scale` and `down` drive it.

    streamrl up --producers 2            # docker compose: Kafka (KRaft), trainer, producers
    streamrl up --local --producers 2    # the same as local processes, on the file log
    streamrl up --local --log kafka://127.0.0.1:9092 --recipe recipes/arithmetic/recipe_ci.toml

Without a Docker engine `up` says so and offers `--local`. A local `up` runs `streamrl run` detached
(its output in runs/<run_id>/up.log) and returns once the trainer and producers are running.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from streamrl.launch import compose
from streamrl.launch.state import CURRENT, UP_FILE, is_ours, processes
from streamrl.launch.supervisor import write_json
from streamrl.recipe.config import ConfigError, load_config

DEFAULT_RECIPE = "recipes/arithmetic/recipe.toml"
START_TIMEOUT_S = 300.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=DEFAULT_RECIPE,
                   help=f"recipe TOML (default {DEFAULT_RECIPE})")
    p.add_argument("--producers", type=int, default=None, help="override rollout.num_producers")
    p.add_argument("--max-versions", type=int, default=None, help="override run.max_versions")
    p.add_argument("--run", default=None, help="run id (default: <recipe name>-<time>)")
    p.add_argument("--runs-dir", default="runs", help="where run files go (default: runs)")
    p.add_argument("--local", action="store_true",
                   help="local processes instead of docker compose (no Docker engine needed)")
    p.add_argument("--build-local", action="store_true",
                   help="compose: build the images here without a registry (scripts/images.sh) "
                        "and run on them")
    p.add_argument("--ca", action="store_true",
                   help="with --build-local: trust this machine's extra CA certificates "
                        "(/usr/local/share/ca-certificates) inside the images")


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        config = load_config(args.recipe)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run_id = args.run or f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs_dir = Path(args.runs_dir).absolute()
    if (runs_dir / run_id / UP_FILE).exists():
        print(f"error: run {run_id} was already started ({runs_dir / run_id / UP_FILE})",
              file=sys.stderr)
        return 2
    if not args.local:
        return _up_compose(args, run_id, runs_dir, console)
    return _up_local(args, run_id, runs_dir, console)


def _up_compose(args: argparse.Namespace, run_id: str, runs_dir: Path, console: Console) -> int:
    try:
        compose.check_engine()
    except compose.NoDockerEngine as error:
        console.print(f"[red]{error}[/red]\nstreamrl up needs a running Docker engine for "
                      "compose/docker-compose.yml. Start the same topology as local processes "
                      f"instead:\n  streamrl up --local --recipe {args.recipe}"
                      + (f" --producers {args.producers}" if args.producers else ""))
        return 2
    up = {"mode": "compose", "run_id": run_id, "log": compose.HOST_LOG, "recipe": args.recipe,
          "producers": args.producers or 1, "max_versions": args.max_versions,
          "images": compose.LOCAL_IMAGES if args.build_local else {}}
    if args.build_local and (code := compose.build_local_images(args.ca)) != 0:
        console.print("[red]building the local images failed (scripts/images.sh)[/red]")
        return code
    # local images are built already; official ones are pulled, and the streamrl image built
    build = [] if args.build_local else ["--build"]
    code = compose.compose("up", "-d", *build, "--scale", f"producer={up['producers']}",
                           env=compose.compose_env(up))
    if code == 0:
        _remember(runs_dir, run_id, up)
        console.print(f"run {run_id} is up (compose); `streamrl ps`, `streamrl down`")
    return code


def _up_local(args: argparse.Namespace, run_id: str, runs_dir: Path, console: Console) -> int:
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "streamrl.cli", "run", args.recipe, "--log", args.log,
           "--run", run_id, "--runs-dir", str(runs_dir)]
    if args.producers is not None:
        cmd += ["--producers", str(args.producers)]
    if args.max_versions is not None:
        cmd += ["--max-versions", str(args.max_versions)]
    with (run_dir / "up.log").open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,  # survives this shell; `down` stops it
                                env={**os.environ, "COLUMNS": "120"})
    _remember(runs_dir, run_id, {"mode": "local", "run_id": run_id, "log": args.log,
                                 "recipe": args.recipe, "pid": proc.pid, "cmd": cmd})
    with console.status(f"starting run {run_id} (log {args.log})"):
        if not _wait_running(runs_dir, run_id, proc):
            tail = (run_dir / "up.log").read_text(errors="replace")[-3000:]
            console.print(f"[red]run {run_id} did not start[/red]; the end of its output:\n{tail}")
            return 1
    console.print(f"run {run_id} is up (local processes, supervisor pid {proc.pid}); output in "
                  f"{run_dir / 'up.log'}\n  streamrl ps · streamrl scale {run_id} --producers N · "
                  "streamrl down")
    return 0


def _wait_running(runs_dir: Path, run_id: str, proc: subprocess.Popen) -> bool:
    """True once the supervisor reports the trainer and every producer running (producers once
    they have joined the run)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        state = processes(runs_dir, run_id) or {}
        members = state.get("members", [])
        if members and len(members) == state.get("num_producers", 0) + 1 and all(
                is_ours(m.get("pid")) and m["status"] == "running" for m in members):
            return True
        time.sleep(0.5)
    return False


def _remember(runs_dir: Path, run_id: str, info: dict) -> None:
    write_json(runs_dir / run_id / UP_FILE, {**info, "started_ms": int(time.time() * 1000)})
    (runs_dir / CURRENT).write_text(run_id + "\n")
