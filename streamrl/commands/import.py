"""`streamrl import DIR`: a run exported with `streamrl export` made a run again, in the file log
or on Kafka, its files under `--runs-dir`. Replay, audit, fork and counterfactuals then work on it.

    streamrl import exported/my-run                          # the file log runs/log
    streamrl import exported/my-run --log kafka://127.0.0.1:9092 --runs-dir /data/runs

Exit codes: 0 imported, 2 unusable input (not an export, the run exists already).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from streamrl import aio
from streamrl.commands.archive_progress import copy_progress
from streamrl.log import open_log

if TYPE_CHECKING:
    from streamrl.replay.archive.layout import Manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="a folder written by `streamrl export`")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"),
                   help="where the run's files go: RUNS_DIR/<run id> (default: runs)")


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        manifest = aio.run(_import(args))
    except ValueError as error:  # includes OffsetsNotKept
        console.print(f"[red]streamrl import: {error}[/red]", highlight=False)
        return 2
    console.print(f"imported run {manifest.run_id} into {args.log} (files in "
                  f"{args.runs_dir / manifest.run_id}), exported from {manifest.source_log}",
                  highlight=False)
    console.print(f"check it: streamrl audit {manifest.run_id} --log {args.log}", highlight=False)
    return 0


async def _import(args: argparse.Namespace) -> Manifest:
    from streamrl.replay.archive import import_run
    from streamrl.replay.archive.layout import Manifest

    run_id = Manifest.read(args.dir).run_id
    # Kafka keeps offsets through transactions, which need a writer id.
    async with open_log(args.log, **({"writer_id": f"{run_id}.import"}
                                     if args.log.startswith("kafka://") else {})) as log:
        with copy_progress(f"importing {run_id}") as (on_stream, on_records):
            return await import_run(args.dir, log, args.runs_dir, on_stream=on_stream,
                                    on_records=on_records)
