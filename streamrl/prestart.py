"""A run's process started before its run exists: `streamrl run` starts the trainer and the
producers while it checks the recipe, so their imports (torch: seconds) overlap its checks.

    python -m streamrl.consumers.trainer --log URL --await-run      # imports, then waits here
    run_id = run_id_from_launcher()      # the launcher writes the run id once RunStarted is in
                                         # the log; None: the run was refused, exit, touch nothing

The launcher's side is `streamrl.launch.local.Prestarted`. Until the id arrives the process has
opened nothing: a refused recipe leaves no trace of it (the launcher also sends SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO


def run_id_from_launcher(stream: TextIO | None = None) -> str | None:
    """The run id the launcher writes on stdin (one line); None at end of file."""
    line = (stream or sys.stdin).readline()
    return line.strip() or None


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """`--run ID`, or `--await-run` for a process started ahead of its run."""
    p.add_argument("--run", default=None)
    p.add_argument("--await-run", action="store_true",
                   help="started ahead of its run: read the run id from stdin "
                        "(streamrl/prestart.py)")


def run_id_of(args: argparse.Namespace, p: argparse.ArgumentParser) -> str | None:
    """The run id from `--run` or, with `--await-run`, from the launcher (None: the run was
    refused; exit without touching anything). Neither given: a usage error."""
    if args.await_run:
        return run_id_from_launcher()
    if args.run is None:
        p.error("--run is required")
    return args.run
