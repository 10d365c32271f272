"""`streamrl staleness RUN`: how stale the trained data was, what was dropped or throttled and
why, producer throughput and version lag over time; a PNG, a JSON summary and a short table.

    streamrl staleness my-run                       # writes <run dir>/staleness.{json,png}
    streamrl staleness my-run --out /tmp/report --log kafka://127.0.0.1:9092

Exit code 2 for an unknown run. Definitions: streamrl/report/staleness.py and docs/audit.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from rich.console import Console

from streamrl import aio
from streamrl.log import Log, open_log
from streamrl.streams import RunStreams, check_run_id

if TYPE_CHECKING:
    from streamrl.audit import RunRecords


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where staleness.json and staleness.png go (default: the run's directory)")
    p.add_argument("--bucket-s", type=float, default=None,
                   help="throughput bucket in seconds (default: about 30 buckets over the run)")


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:  # a bad or unknown run id is answered before torch is imported
        check_run_id(args.run)
        with console.status(f"reading run {args.run}…"):
            records = aio.run(_load(args.log, args.run))
    except (LookupError, ValueError) as error:  # AuditInputError is a ValueError
        console.print(f"[red]streamrl staleness: {error}[/red]", highlight=False)
        return 2
    from streamrl.report import staleness_summary
    from streamrl.report.plots import plot_staleness, print_summary
    summary = staleness_summary(records, bucket_s=args.bucket_s)
    out = args.out if args.out is not None else records.ctx.run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "staleness.json").write_text(json.dumps(msgspec.to_builtins(summary), indent=2))
    plot_staleness(summary, out / "staleness.png")
    print_summary(summary, console)
    console.print(f"wrote {out / 'staleness.json'} and {out / 'staleness.png'}",
                  highlight=False)
    return 0


async def _load(url: str, run_id: str) -> RunRecords:
    async with open_log(url) as log:
        await _exists(log, run_id)
        from streamrl.audit import load_run
        return await load_run(log, run_id)


async def _exists(log: Log, run_id: str) -> None:
    """An unknown run is answered before torch is imported (the audit's config needs it)."""
    if RunStreams(run_id).events not in await log.list_streams(run_id):
        raise LookupError(f"run {run_id!r} has no events stream in {log.url} (unknown run id, "
                          f"or the wrong --log?)")
