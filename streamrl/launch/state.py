"""What `streamrl up` leaves behind so `ps`, `scale` and `down` find a run started elsewhere:

    runs/<run_id>/up.json          how it was started: mode (local | compose), log URL, pid
    runs/<run_id>/processes.json   written by the run's supervisor: its processes, their status
    runs/current                   the run id of the newest `up` (the default for ps/down/scale)

Process ids are checked against /proc before anything is signalled: a pid the OS reused for an
unrelated program is never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

UP_FILE = "up.json"
CURRENT = "current"
OUR_MODULES = ("streamrl.producers", "streamrl.consumers.trainer", "streamrl")


class NoSuchRun(LookupError):
    pass


def resolve_run(runs_dir: Path, run_id: str | None) -> str:
    """`run_id`, or the newest run started with `streamrl up`."""
    if run_id:
        return run_id
    current = runs_dir / CURRENT
    if not current.exists():
        raise NoSuchRun(f"no run given and no {current}: start one with `streamrl up`, or name it")
    return current.read_text().strip()


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The run and runs-dir arguments that `ps`, `scale` and `down` share."""
    p.add_argument("run", nargs="?", default=None, help="run id (default: the newest `up`)")
    p.add_argument("--runs-dir", default="runs", help="where run files are (default: runs)")


def chosen_run(args: argparse.Namespace) -> tuple[Path, str] | None:
    """(runs dir, run id) the command's arguments name; None after printing why there is none."""
    runs_dir = Path(args.runs_dir)
    try:
        return runs_dir, resolve_run(runs_dir, args.run)
    except NoSuchRun as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def up_info(runs_dir: Path, run_id: str) -> dict[str, Any] | None:
    return read_json(runs_dir / run_id / UP_FILE)


def processes(runs_dir: Path, run_id: str) -> dict[str, Any] | None:
    from streamrl.launch.supervisor import STATE_FILE

    return read_json(runs_dir / run_id / STATE_FILE)


def is_ours(pid: int | None) -> bool:
    """A live (not zombie) process of ours: python running one of streamrl's modules."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat.rpartition(")")[2].split()[0] == "Z":
        return False
    return any(m in cmdline for m in OUR_MODULES)


def signal_ours(pid: int | None, sig: signal.Signals) -> bool:
    if not is_ours(pid):
        return False
    try:
        os.kill(pid, sig)  # type: ignore[arg-type]
    except ProcessLookupError:
        return False
    return True


def run_pids(runs_dir: Path, run_id: str) -> list[int]:
    """Every pid the run's files name that is still one of ours: supervisor and members."""
    pids = []
    up = up_info(runs_dir, run_id) or {}
    state = processes(runs_dir, run_id) or {}
    for pid in [up.get("pid"), state.get("supervisor_pid"),
                *(m.get("pid") for m in state.get("members", []))]:
        if pid and pid not in pids and is_ours(pid):
            pids.append(pid)
    return pids
