"""`streamrl replay RUN`: reproduce a run bit-exactly from its log, or re-train it offline under
another staleness policy or loss (a counterfactual run that names its parent).

    streamrl replay RUN                                  # every version, digest by digest
    streamrl replay RUN --until 10 --log kafka://127.0.0.1:9092
    streamrl replay FORK --chain                         # a fork: its parent's versions too
    streamrl replay RUN --staleness MaxLag,max_lag=0 --as RUN-sync
    streamrl replay RUN --staleness my_policy.toml --loss streamrl.consumers.trainer.losses:ppo_tis
    streamrl replay RUN --loss gspo --as RUN-gspo       # a loss by name (docs/algorithms.md)
    streamrl replay RUN --staleness MaxLag,max_lag=4 --trajectories RUN-rereward
    streamrl replay RUN --trajectories RUN-rereward      # RUN's own policy, the new rewards

Exit codes: 0 reproduced (or counterfactual finished), 1 a version diverged, 2 unusable input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamrl import aio
from streamrl.log import HistoryDeletedError, open_log
from streamrl.replay.runs import ReplayError

if TYPE_CHECKING:
    from streamrl.replay.exact import ReplayReport


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="the recorded run to replay")
    p.add_argument("--until", type=int, default=None,
                   help="replay versions 1..UNTIL only (default: every announced version)")
    p.add_argument("--record", action="store_true",
                   help="also write the replayed versions as a new run (--as NEW_RUN, default "
                        "RUN-replay-<time>) with RunParent relation 'replay'; without it replay "
                        "writes nothing")
    p.add_argument("--chain", action="store_true",
                   help="for a fork: first replay its parent up to the fork version (and that "
                        "parent's parent, for a fork of a fork), then continue the fork from "
                        "the replayed learner instead of its saved starting state")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; bit-exactness needs the trainer's count (default 1, "
                        "as `streamrl run` trains)")
    cf = p.add_argument_group("counterfactual re-training (a new run in the same log)")
    cf.add_argument("--staleness", default=None, metavar="SPEC",
                    help="the staleness policy to re-train under: POLICY[,OPTION=VALUE...] "
                         "(POLICY a class of streamrl.staleness or a module:Class path, e.g. "
                         "'MaxLag,max_lag=0'), or a TOML file with a [staleness] section")
    cf.add_argument("--loss", default=None, metavar="NAME",
                    help="another loss, by name (decoupled_ppo, ppo_tis, gspo, gspo_token, "
                         "cispo) or import path (e.g. my.pkg.losses:my_loss)")
    cf.add_argument("--as", dest="as_run", default=None, metavar="NEW_RUN",
                    help="id of the new run (default: RUN-cf-<time>, or RUN-replay-<time> with "
                         "--record)")
    cf.add_argument("--trajectories", default=None, metavar="RUN2",
                    help="read RUN2's trajectories stream instead of RUN's (e.g. a re-rewarded "
                         "copy made by `streamrl rereward`); alone, RUN's own policy and loss")
    cf.add_argument("--runs-dir", default=None,
                    help="where the new run's files go (default: next to RUN's)")


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    # Another policy, loss or trajectory stream (e.g. re-rewarded): a counterfactual run.
    counterfactual = any(x is not None for x in (args.staleness, args.loss, args.trajectories))
    args.runs_dir = Path(args.runs_dir).absolute() if args.runs_dir else None
    if not counterfactual and args.as_run and not args.record:
        print("error: --as needs --record, --staleness, --loss or --trajectories (it names a "
              "new run)", file=sys.stderr)
        return 2
    if counterfactual and args.record:
        print("error: --record is for bit-exact replays; a counterfactual is always recorded",
              file=sys.stderr)
        return 2
    try:
        return aio.run(_counterfactual(args) if counterfactual else _exact(args))
    except (ReplayError, HistoryDeletedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _progress(what: str) -> Progress:
    return Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.description}"))


async def _exact(args: argparse.Namespace) -> int:
    from streamrl.replay.exact import replay_exact

    console = Console()
    record_as = None
    if args.record:
        record_as = args.as_run or f"{args.run}-replay-{time.strftime('%Y%m%d-%H%M%S')}"
    async with open_log(args.log, writer_id=f"{record_as or args.run}-replay") as log:
        progress = _progress("replaying versions")
        task = progress.add_task("", total=args.until)
        with progress:
            def advance(version: int, total: int) -> None:
                progress.update(task, completed=version, total=total,
                                description=f"v{version} matches")

            report = await replay_exact(log, args.run, until=args.until, on_version=advance,
                                        record_as=record_as, chain=args.chain)
    if record_as is not None:
        console.print(f"recorded as run {record_as} (parent {args.run}, relation replay)")
    for part in report.chained:
        _print_headline(console, part)
    if report.chained and not report.chained[-1].ok:
        console.print(f"[red]run {args.run} not replayed: its starting state comes from the "
                      "parent's version that diverged[/red]")
        _print_divergence(console, report.chained[-1])
        return 1
    _print_headline(console, report)
    if report.ok:
        return 0
    _print_divergence(console, report)
    return 1


def _print_headline(console: Console, report: ReplayReport) -> None:
    """The headline; for a fork, also which versions were replayed and whose the others are."""
    first, parent = report.first_version, report.forked_from
    span = f" (versions {first + 1}..{first + report.num_versions})" if parent else ""
    style = "green" if report.ok else "red"
    console.print(f"[{style}]run {report.run_id}: {report.headline}{span}[/{style}] "
                  f"({report.seconds:.1f} s, {report.threads} torch thread(s))")
    if parent is not None:
        start = ("the learner replayed above" if report.chained
                 else "its recorded starting state")
        more = ("" if report.chained else f": `streamrl replay {parent.run_id} --until "
                                          f"{first}`, or this replay with --chain")
        console.print(f"run {report.run_id} is a fork of {parent.run_id}@{parent.version}: "
                      f"version {first} is {start} (digest checked); versions <= {first} "
                      f"belong to {parent.run_id}{more}", highlight=False)


def _print_divergence(console: Console, report: ReplayReport) -> None:
    div = report.divergence
    if div is None:
        return
    what = f"batch {div.batch_id}" if div.batch_id else "the initial checkpoint"
    console.print(f"version {div.version} ({what}): replay digest {div.digest[:16]}…, announced "
                  f"{div.expected[:16]}…\nrecorded tensors: {div.source}")
    if div.diffs:
        table = Table(title=f"tensors that differ at version {div.version}",
                      title_justify="left")
        for col in ("tensor", "max |Δ|", "differing", "of"):
            table.add_column(col, justify="left" if col == "tensor" else "right")
        for d in div.diffs:
            table.add_row(d.name + (f" ({d.note})" if d.note else ""), f"{d.max_abs:.3g}",
                          str(d.num_differing), str(d.numel))
        console.print(table)


async def _counterfactual(args: argparse.Namespace) -> int:
    from streamrl.replay.counterfactual import Override, counterfactual
    from streamrl.replay.spec import parse_staleness

    console = Console()
    override = Override(staleness=parse_staleness(args.staleness) if args.staleness else None,
                        loss=args.loss)
    new_run = args.as_run or f"{args.run}-cf-{time.strftime('%Y%m%d-%H%M%S')}"
    async with open_log(args.log, writer_id=f"{new_run}-trainer") as log:
        progress = _progress(f"re-training {new_run}")
        task = progress.add_task("", total=None)
        with progress:
            def advance(version: int, total: int) -> None:
                progress.update(task, completed=version, total=total)

            report = await counterfactual(log, args.run, override, new_run=new_run,
                                          trajectories=args.trajectories, runs_dir=args.runs_dir,
                                          on_version=advance)
    console.print(report.table())
    console.print(f"compare: streamrl compare {args.run} {new_run} --log {args.log}")
    return 0
