"""`streamrl run RECIPE`: an RL run with the trainer and producers as concurrent local processes.

    streamrl run recipes/arithmetic/recipe.toml                          # embedded file log
    streamrl run recipes/arithmetic/recipe.toml --log kafka://127.0.0.1:9092
    streamrl run recipes/arithmetic/recipe.toml --producers 2 --max-versions 40
    streamrl run recipes/arithmetic/recipe.toml --ray                    # Ray actors, local Ray
    streamrl run recipes/arithmetic/recipe.toml --fork arithmetic-20261125-101500@20

Files of the run (checkpoints, published weights, TensorBoard logs, the reward curve and
`summary.json` with the eval figures) go to `runs/<run_id>/`; everything else is in the log,
under the run's streams.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamrl import aio

if TYPE_CHECKING:  # the run's modules import torch: imported when the command runs (below)
    from rich.table import Table

    from streamrl.launch import Launcher
    from streamrl.launch.local import Prestarted
    from streamrl.recipe.config import RunConfig
    from streamrl.recipe.context import RunContext
    from streamrl.recipe.hooks import Hooks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe TOML file, e.g. recipes/arithmetic/recipe.toml")
    p.add_argument("--run", default=None, help="run id (default: <recipe name>-<time>)")
    p.add_argument("--runs-dir", default="runs", help="where run files go (default: runs)")
    p.add_argument("--producers", type=int, default=None, help="override rollout.num_producers")
    p.add_argument("--max-versions", type=_max_versions, default=None,
                   help="override run.max_versions (\"recipe\": keep the recipe's)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the trainer and producers as Ray actors (placement from the "
                        "recipe's [placement]); ADDRESS of a cluster, or none for a local Ray")
    p.add_argument("--external-producers", action="store_true",
                   help="start only the trainer: producers are started elsewhere (docker "
                        "compose replicas, compose/docker-compose.yml)")
    p.add_argument("--weights-transport", default=None, metavar="KIND",
                   help="override weights.transport (compose passes \"file\": containers share "
                        "the runs volume, not /dev/shm)")
    p.add_argument("--resume", action="store_true",
                   help="if the run already exists in the log, continue it (the trainer resumes "
                        "from the log) instead of refusing: compose restarts the trainer so")
    p.add_argument("--fork", default=None, metavar="RUN@VERSION",
                   help="start from run RUN's weight version VERSION and its place in the log "
                        "(nothing of RUN's past is generated again); docs/fork-and-rereward.md")


def _max_versions(text: str) -> int | None:
    """An int, or "recipe" for the recipe's own value (compose passes one or the other)."""
    return None if text == "recipe" else int(text)


def run(args: argparse.Namespace) -> int:
    args.runs_dir = Path(args.runs_dir).absolute()  # processes may start elsewhere
    return aio.run(_main(args, _num_prestarted(args)))


async def _main(args: argparse.Namespace, num_prestarted: int | None) -> int:
    """The trainer and producers start first (`Prestarted`: they import torch meanwhile), then
    the recipe is checked; a refused recipe ends them before they have touched the log."""
    prestarted = None
    if num_prestarted is not None:
        from streamrl.launch.local import Prestarted

        prestarted = await Prestarted.start(args.log, num_prestarted)
    try:
        from streamrl.recipe.config import ConfigError, load_recipe
        from streamrl.run.fork import ForkError, parse_fork_spec

        try:
            config, hooks = load_recipe(args.recipe)
            config = _with_overrides(config, args)  # overrides touch no hook path
            args.fork = parse_fork_spec(args.fork) if args.fork is not None else None
        except (ConfigError, ForkError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return await _run(args, config, hooks, prestarted)
    finally:
        if prestarted is not None:  # what the run did not take (LocalLauncher.close: the rest)
            await prestarted.close()


def _num_prestarted(args: argparse.Namespace) -> int | None:
    """How many producers to start with the trainer before the recipe is checked, or None:
    not with Ray or external producers, nor with the broadcast weight transport (its processes
    get their rank in the environment). The recipe is only peeked at here (`load_recipe` checks
    it): a wrong guess costs an unused process, ended when the run starts."""
    if args.ray is not None or args.external_producers:
        return None
    try:
        with open(args.recipe, "rb") as f:
            peek: dict[str, Any] = tomllib.load(f)
        transport = args.weights_transport or peek.get("weights", {}).get("transport")
        num_producers = args.producers or peek.get("rollout", {}).get("num_producers", 1)
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return None  # load_recipe says what is wrong
    if transport == "broadcast" or not isinstance(num_producers, int) or not (
            0 < num_producers <= 64):
        return None
    return num_producers


def _with_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    import msgspec

    from streamrl.recipe.config import ConfigError, RunConfig

    data = msgspec.to_builtins(config)
    if args.producers is not None:
        data["rollout"]["num_producers"] = args.producers
    if args.max_versions is not None:
        data["run"]["max_versions"] = args.max_versions
    if args.weights_transport is not None:
        data["weights"]["transport"] = args.weights_transport
    try:
        return msgspec.convert(data, RunConfig)
    except (msgspec.ValidationError, ValueError) as error:
        raise ConfigError(f"{args.recipe} with command-line overrides: {error}") from None


async def _run(args: argparse.Namespace, config: RunConfig, hooks: Hooks,
               prestarted: Prestarted | None) -> int:
    import msgspec
    from rich.console import Console

    from streamrl.checkpoints import checkpoint_dir
    from streamrl.consumers.trainer.resume import ResumeError
    from streamrl.hooks.run import EvalRequest
    from streamrl.launch import LaunchError
    from streamrl.launch.exhaustion import PromptsExhausted
    from streamrl.log import open_log
    from streamrl.recipe.config import ConfigError
    from streamrl.recipe.context import load_run_context
    from streamrl.run.driver import RunExists, RunStopped, start_run, supervise
    from streamrl.run.fork import ForkError
    from streamrl.run.monitor import eval_metrics, plot_reward

    console = Console()
    run_id = args.run or f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    evaluate = hooks.evaluate
    async with open_log(args.log, writer_id=f"{run_id}-driver") as log:
        console.print(f"[bold]run {run_id}[/bold]: log {log.url}, files {args.runs_dir / run_id}")
        try:
            ctx, v0 = await start_run(config, log, run_id, args.runs_dir, recipe=args.recipe,
                                      fork=args.fork, hooks=hooks, check_prompts=True)
        except RunExists as error:
            if not args.resume:
                console.print(f"[red]{error}[/red]: choose another --run")
                return 2
            # a restarted trainer container: the log holds the run, the trainer resumes from it
            ctx, v0 = await load_run_context(log, run_id), contextlib.nullcontext()
            console.print(f"run {run_id} exists in {log.url}: resuming it from the log")
        except (ForkError, ResumeError) as error:
            console.print(f"[red]error: {error}[/red]")
            return 2
        except ConfigError as error:  # e.g. too few prompts for max_versions: nothing written
            print(f"error: {error}", file=sys.stderr)
            return 2
        if ctx.fork is not None:
            console.print(f"forked from {args.fork.run_id}@{ctx.fork.version}: "
                          f"{ctx.fork.num_carried_samples} samples carried over")
        evals = {}
        if evaluate is not None:
            evals["eval before"] = _headline(evaluate(EvalRequest(
                checkpoint_dir=ctx.init_checkpoint, version=ctx.first_version)))
        t0 = time.monotonic()
        with v0:
            try:
                monitor = await supervise(ctx, args.log, log,
                                          _launcher(args, ctx, prestarted))
            except RunStopped as stopped:
                console.print(f"[yellow]{stopped}[/yellow]")
                return 143
            except PromptsExhausted as exhausted:
                console.print(f"[red]run {run_id}: {exhausted}[/red]", highlight=False)
                return 1
            except LaunchError as failed:  # a role kept crashing, or refused to start
                console.print(f"[red]run {run_id}: {failed}[/red]", highlight=False)
                return 1
        wall = time.monotonic() - t0
        final = checkpoint_dir(ctx.run_dir, config.run.max_versions)
        if evaluate is not None:
            evals["eval after"] = _headline(evaluate(EvalRequest(
                checkpoint_dir=final, version=config.run.max_versions)))
    png = plot_reward(monitor.stats.steps, ctx.run_dir / "reward.png", run_id, evals,
                      periodic=monitor.stats.evals)
    summary = {"run_id": run_id, "wall_s": wall, "evals": evals,
               "parent": msgspec.to_builtins(ctx.parent), "first_version": ctx.first_version,
               "rejected": dict(monitor.stats.rejected),
               "batch_reward": [s.metrics.get("reward_mean") for s in monitor.stats.steps],
               "periodic_evals": [{"version": e.version, **eval_metrics(e),
                                   "num_prompts": e.num_prompts, "duration_ms": e.duration_ms}
                                  for e in monitor.stats.evals]}
    (ctx.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(_summary(monitor.stats.steps, evals, wall, monitor.stats.rejected,
                           monitor.stats.evals))
    console.print(f"reward curve: {png}\nTensorBoard: tensorboard --logdir {ctx.run_dir}")
    if config.logging.wandb is not None:  # docs/observability.md
        console.print(f"W&B: run {run_id} of project {config.logging.wandb.project}, files in "
                      f"{ctx.run_dir / 'wandb'} (offline: `wandb sync` them)")
    console.print(f"inspect: streamrl inspect {run_id} --log {args.log}")
    return 0


def _launcher(args: argparse.Namespace, ctx: RunContext,
              prestarted: Prestarted | None) -> Launcher | None:
    """Ray actors with `--ray`; local processes otherwise (None: the driver's default), using
    the prestarted ones where the checked recipe starts them as they are."""
    if prestarted is not None:
        from streamrl.launch.disaggregated import role_env
        from streamrl.launch.local import LocalLauncher

        if role_env(ctx.config) is None:
            return LocalLauncher(args.log, ctx.run_id, prestarted=prestarted)
    if args.external_producers:
        from streamrl.launch.compose import ExternalProducers

        return ExternalProducers(args.log, ctx.run_id)
    if args.ray is None:
        return None
    from streamrl.launch.ray_actors import RayLauncher  # imports ray: only when asked for

    return RayLauncher(args.log, ctx.run_id, ctx.config.placement, address=args.ray,
                       initial_producers=ctx.config.rollout.num_producers)


def _headline(metrics: dict[str, float]) -> float:
    """The first metric an evaluator reports is its headline (e.g. accuracy)."""
    return next(iter(metrics.values()))


def _summary(steps: list, evals: dict[str, float], wall: float, rejected: dict,
             periodic: list) -> Table:
    from rich.table import Table

    from streamrl.run.monitor import eval_metrics

    table = Table(title="run summary", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    rewards = [s.metrics.get("reward_mean", float("nan")) for s in steps]
    if rewards:
        k = max(1, len(rewards) // 5)
        table.add_row(f"mean batch reward, first {k} versions", f"{sum(rewards[:k]) / k:.3f}")
        table.add_row(f"mean batch reward, last {k} versions", f"{sum(rewards[-k:]) / k:.3f}")
    for name, value in evals.items():
        table.add_row(name, f"{value:.3f}")
    for event in periodic:  # [eval] every_versions, in the order they were recorded
        table.add_row(f"eval at version {event.version}", ", ".join(
            f"{name} {value:.3f}" for name, value in eval_metrics(event).items()))
    table.add_row("versions trained", str(len(steps)))
    table.add_row("wall time", f"{wall:.0f} s")
    for code, n in sorted(rejected.items()):
        table.add_row(f"rejected: {code}", str(n))
    return table
