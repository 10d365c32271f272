"""`streamrl audit RUN`: check a run's lineage end to end; exit 1 on any violation.

    streamrl audit my-run                                  # the embedded file log (runs/log)
    streamrl audit my-run --log kafka://127.0.0.1:9092 --json audit.json

Exit codes: 0 every check passed, 1 at least one violation, 2 unusable input (unknown run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from streamrl import aio
from streamrl.log import HistoryDeletedError, Log, open_log
from streamrl.streams import RunStreams, check_run_id

if TYPE_CHECKING:
    from streamrl.audit import AuditReport


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the full report (every violation) as JSON here")


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:  # a bad or unknown run id is answered before torch is imported
        check_run_id(args.run)
        with console.status(f"auditing run {args.run}: reading its streams and checking…"):
            report = aio.run(_audit(args.log, args.run))
    except (LookupError, ValueError, HistoryDeletedError) as error:  # AuditInputError: ValueError
        console.print(f"[red]streamrl audit: {error}[/red]", highlight=False)
        return 2
    from streamrl.audit.render import print_report
    print_report(report, console)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_builtins(), indent=2))
    return 0 if report.ok else 1


async def _audit(url: str, run_id: str) -> AuditReport:
    async with open_log(url) as log:
        await _exists(log, run_id)
        from streamrl.audit import audit_run
        return await audit_run(log, run_id)


async def _exists(log: Log, run_id: str) -> None:
    """An unknown run is answered before torch is imported (the audit's config needs it)."""
    if RunStreams(run_id).events not in await log.list_streams(run_id):
        raise LookupError(f"run {run_id!r} has no events stream in {log.url} (unknown run id, "
                          f"or the wrong --log?)")
