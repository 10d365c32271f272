"""`streamrl export RUN DIR`: a self-contained copy of a run in a folder of its own: every stream
(file-log format, offsets as in the source), group positions, the run's files (checkpoints, weight
files), its initial checkpoint and recipe, and `trajectories.parquet` (one row per sample).

    streamrl export my-run exported/my-run --log kafka://127.0.0.1:9092
    streamrl import exported/my-run --log runs/log          # a run again, here or elsewhere

Exit codes: 0 exported, 2 unusable input (unknown run, folder not empty, history deleted).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from streamrl import aio
from streamrl.commands.archive_progress import copy_progress
from streamrl.log import HistoryDeletedError, open_log

if TYPE_CHECKING:
    from streamrl.replay.archive.layout import Manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id")
    p.add_argument("dir", type=Path, help="the folder to write (new, or empty)")


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        manifest = aio.run(_export(args))
    except (LookupError, ValueError, HistoryDeletedError) as error:
        console.print(f"[red]streamrl export: {error}[/red]", highlight=False)
        return 2
    records = sum(s.num_records for s in manifest.streams)
    console.print(f"exported run {manifest.run_id} to {args.dir}: {len(manifest.streams)} streams, "
                  f"{records} records, {len(manifest.groups)} group positions, "
                  f"{manifest.num_samples} samples in trajectories.parquet", highlight=False)
    console.print(f"import: streamrl import {args.dir} --log LOG", highlight=False)
    return 0


async def _export(args: argparse.Namespace) -> Manifest:
    from streamrl.replay.archive import export_run

    async with open_log(args.log) as log:
        with copy_progress(f"exporting {args.run}") as (on_stream, on_records):
            return await export_run(log, args.run, args.dir, on_stream=on_stream,
                                    on_records=on_records)
