"""`streamrl rereward RUN --reward module:function [--as NEW_RUN]`: re-score every recorded
trajectory of RUN with another reward function into a new run, generating nothing again.

    streamrl rereward arithmetic-ci-20261125 --reward recipes.arithmetic.task:reward_strict
    streamrl replay arithmetic-ci-20261125 --trajectories arithmetic-ci-20261125-rr --staleness ...

The new run (default `<RUN>-rr`) holds the same samples in the same order with the new rewards;
running the same command again continues it (after a crash, or when RUN recorded more).
docs/fork-and-rereward.md has the details.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamrl import aio
from streamrl.hooks import ResolveError
from streamrl.log import open_log

if TYPE_CHECKING:
    from streamrl.consumers.rereward import RerewardResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="the run whose trajectories are re-scored")
    p.add_argument("--reward", required=True, metavar="NAME|MODULE:FUNCTION",
                   help="a built-in reward (math, gsm8k, exact, regex, format: docs/rewards.md) "
                        "or the import path of a RewardFn(RewardInput) -> RewardOutput "
                        "(streamrl/hooks/rollout.py), e.g. recipes.arithmetic.task:reward")
    p.add_argument("--as", dest="new_run", default=None, metavar="NEW_RUN",
                   help="id of the new run (default: RUN-rr)")
    p.add_argument("--runs-dir", default="runs", help="where run files go (default: runs)")


def run(args: argparse.Namespace) -> int:
    from streamrl.consumers.rereward import RerewardError, rereward  # heavy imports only when run
    from streamrl.producers.rewards.sandbox import RewardSandbox

    new_run = args.new_run or f"{args.run}-rr"
    runs_dir = Path(args.runs_dir).absolute()
    console = Console()

    async def go() -> int:
        async with open_log(args.log, writer_id=f"{new_run}-rereward") as log:
            progress = Progress(TextColumn("[bold]re-scoring records"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn())
            task = progress.add_task("", total=None)
            with progress:
                result = await rereward(
                    log, args.run, args.reward, new_run=new_run,
                    runs_dir=runs_dir, workers=RewardSandbox,
                    on_progress=lambda done, total: progress.update(task, completed=done,
                                                                    total=total))
        console.print(_summary(result, args))
        return 0

    try:
        return aio.run(go())
    except (RerewardError, ResolveError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _summary(result: RerewardResult, args: argparse.Namespace) -> Table:
    table = Table(title=f"rereward {args.run} -> {result.run_id}", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    if result.resumed_at:
        table.add_row("continued from parent offset", str(result.resumed_at))
    table.add_row("records re-scored", str(result.num_records))
    table.add_row("samples re-scored", str(result.num_samples))
    table.add_row("rewards changed", str(result.num_changed))
    if result.num_reward_failures:
        table.add_row("reward calls failed (scored 0)",
                      f"{result.num_reward_failures}, first: {result.first_failure}")
    table.add_row("mean reward before", f"{result.reward_before:.3f}")
    table.add_row("mean reward after", f"{result.reward_after:.3f}")
    table.add_row("dead-lettered records", str(result.num_dead_lettered))
    table.add_row("replay on it", f"streamrl replay {args.run} --trajectories {result.run_id}")
    return table
