"""`streamrl compare RUN_A RUN_B [...]`: runs side by side (a table) and their reward per
version (a PNG), e.g. a run and its counterfactual re-trainings under other staleness policies.

    streamrl compare arithmetic-ci-1 arithmetic-ci-1-sync arithmetic-ci-1-lag4
    streamrl compare RUN_A RUN_B --png compare.png --log kafka://127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from streamrl import aio
from streamrl.log import open_log
from streamrl.replay.compare import compare_table, plot_rewards, summarize_run
from streamrl.replay.runs import ReplayError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids (two or more)")
    p.add_argument("--png", default=None,
                   help="where the reward plot goes (default: compare-<runs>.png in the first "
                        "run's directory)")


def run(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        print("error: compare needs at least two runs", file=sys.stderr)
        return 2
    try:
        return aio.run(_compare(args))
    except ReplayError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


async def _compare(args: argparse.Namespace) -> int:
    from streamrl.replay.runs import existing_run

    async with open_log(args.log) as log:
        summaries = [await summarize_run(log, run_id) for run_id in args.runs]
        first = await existing_run(log, args.runs[0])
    png = Path(args.png) if args.png else (
        first.run_dir / f"compare-{'-vs-'.join(args.runs[1:])[:120]}.png")
    console = Console()
    console.print(compare_table(summaries))
    console.print(f"reward per version: {plot_rewards(summaries, png)}")
    return 0
