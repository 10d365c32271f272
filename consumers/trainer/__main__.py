"""The trainer process of a run (the run driver starts it):

    python -m streamrl.consumers.trainer --log runs/log --run arithmetic-20261125-101500

It rebuilds its state from the log (checkpoint + recorded batches), then trains until the run's
`max_versions`. Killing it at any point and starting it again continues exactly where the
committed log ends.
"""

from __future__ import annotations

import argparse
import sys

import torch

from streamrl import aio
from streamrl.consumers.trainer.learner import LearnerSetup
from streamrl.consumers.trainer.loop import TrainerLoop
from streamrl.consumers.trainer.memory import check_memory
from streamrl.consumers.trainer.metrics import trainer_metrics
from streamrl.consumers.trainer.resume import committed_offsets, read_history, rebuild
from streamrl.log import open_log
from streamrl.plan.learner import TrainerMemoryError
from streamrl.prestart import add_run_arguments, run_id_of
from streamrl.recipe.config import EXIT_REFUSED, ConfigError
from streamrl.recipe.context import load_run_context, trajectory_partitions


async def train(log_url: str, run_id: str) -> None:
    async with open_log(log_url, writer_id=f"{run_id}-trainer") as log:
        ctx = await load_run_context(log, run_id)
        torch.manual_seed(ctx.config.run.seed)
        # the worst step must fit before anything trains (memory.py)
        check_memory(ctx.config, ctx.init_checkpoint)
        num_partitions = await trajectory_partitions(log, ctx)  # fixed at the run's creation
        history = await read_history(log, ctx)
        learner = await rebuild(log, ctx, LearnerSetup.of_run(ctx.config, ctx.hooks,
                                                           reference=ctx.init_checkpoint),
                                  history)
        next_offsets = await committed_offsets(log, ctx.streams.trajectories, num_partitions)
        transport = ctx.transport_config(keep_last=ctx.config.weights.keep_versions,
                                         namespace=ctx.run_id).open()
        # a killed trainer may have written the next version without committing it
        transport.discard_after(history.version)
        try:
            loop = TrainerLoop(log, ctx, learner, transport, version=history.version,
                               trained=history.trained, next_offsets=next_offsets,
                               rejected=history.rejected)
            async with trainer_metrics(log, ctx, learner.model) as metrics:  # [metrics]
                if metrics is not None:
                    loop.on_commit.append(metrics.on_step)
                await loop.run()
        finally:
            transport.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--log", required=True)
    add_run_arguments(p)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    args.run = run_id_of(args, p)
    if args.run is None:  # the run was refused before it started
        return
    torch.set_num_threads(args.threads)
    try:
        aio.run(train(args.log, args.run))
    except (ConfigError, TrainerMemoryError) as refused:  # a restart would refuse again
        print(f"trainer refused to start: {refused}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)


if __name__ == "__main__":
    main()
