"""The local run driver: a run's streams and initial weights, then the trainer and producers as
concurrent local processes, watched through the log until the trainer reaches `max_versions`.

    ctx, v0 = await start_run(config, log, run_id, runs_dir, recipe="recipes/x/recipe.toml")
    with v0:                                  # keeps version 0's tensors loadable meanwhile
        await supervise(ctx, log_url, log)    # spawns processes, shows progress, ends the run
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import msgspec

from streamrl.data import DatasetPrompts
from streamrl.hooks.run import PROMPT_TEXT, PromptRequest, PromptSpec
from streamrl.launch.base import Launcher
from streamrl.log import Append, Log
from streamrl.models.checkpoint import read_safetensors
from streamrl.models.config import ModelConfig
from streamrl.models.lora_files import run_adapter
from streamrl.recipe.config import DEFAULT_NUM_PROMPTS, ConfigError, RunConfig
from streamrl.recipe.context import RunContext, trajectory_partitions
from streamrl.recipe.hooks import Hooks, resolve_hooks
from streamrl.run.fork import ForkPlan, ForkSpec, plan_fork, write_fork
from streamrl.run.init import prepare_init
from streamrl.run.loggers import open_writers
from streamrl.run.monitor import Monitor
from streamrl.schemas import Prompt, encode_event
from streamrl.streams import RunStreams
from streamrl.weights import Published, TransportConfig, WeightTransport, fp8
from streamrl.weights.inline import publish_version


class RunExists(RuntimeError):
    pass


class TooFewPrompts(ConfigError):
    """The run's prompts cannot make `run.max_versions` versions even if no sample is dropped."""


def check_enough_prompts(config: RunConfig, num_prompts: int) -> None:
    """Refuse a run whose `num_prompts` prompts could not fill its batches up to
    `run.max_versions` even if the trainer kept every sample (each version trains batch_size
    samples, and a prompt makes samples_per_prompt at most once: a requeued prompt replaces the
    group it had). Drops and filtered groups can only make it end sooner, which the supervisor
    detects while the run goes (streamrl/launch/exhaustion.py)."""
    n, batch = config.data.samples_per_prompt, config.trainer.batch_size
    max_versions = config.run.max_versions
    if num_prompts * n >= max_versions * batch:
        return
    possible = num_prompts * n // batch
    needed = -(-max_versions * batch // n)
    more = ("raise data.epochs or data.num_prompts" if config.data.train is not None
            else "raise data.num_prompts")
    lower = f", or lower run.max_versions to {possible}" if possible else ""
    raise TooFewPrompts(
        f"prompts exhausted at version {possible} of {max_versions} before the run starts: "
        f"run.max_versions {max_versions} x trainer.batch_size {batch} needs "
        f"{max_versions * batch} samples, but the run's {num_prompts} prompts x "
        f"data.samples_per_prompt {n} make {num_prompts * n}; give it at least {needed} prompts "
        f"({more}){lower}")


async def start_run(config: RunConfig, log: Log, run_id: str, runs_dir: Path, *,
                    recipe: str, fork: ForkSpec | None = None, hooks: Hooks | None = None,
                    check_prompts: bool = False) -> tuple[RunContext, WeightTransport]:
    """Everything a run needs before its first process starts: streams, RunStarted, prompts and
    version 0 of the weights, whose transport the caller keeps open for the run (closing it
    releases the tensors). Refuses a run id that already exists in the log. With `fork`, the
    run starts from another run's version instead (streamrl/run/fork.py): that version's
    weights, announced as the first version, and the parent's unfinished prompts and samples.
    `hooks` are `config`'s when the caller resolved them already (`load_recipe`). With
    `check_prompts` (`streamrl run`), a run whose prompts cannot make `run.max_versions` is
    refused before anything is written (`check_enough_prompts`); tests that start a run to
    exercise one part of it leave it off."""
    if not runs_dir.is_absolute():  # the trainer and producers may start in another directory
        raise ValueError(f"runs_dir must be an absolute path, got {runs_dir}")
    run_dir = runs_dir / run_id
    if RunStreams(run_id).events in await log.list_streams(run_id):
        raise RunExists(f"run {run_id!r} already exists in {log.url}")
    hooks = hooks if hooks is not None else resolve_hooks(config)
    plan: ForkPlan | None = None
    specs: list[PromptSpec] = []
    if fork is None:
        # the prompts exist before anything is written: a failing hook, or too few prompts for
        # max_versions, starts no run
        specs = await asyncio.to_thread(hooks.prompts, PromptRequest(
            seed=config.run.seed, num_prompts=config.data.num_prompts or DEFAULT_NUM_PROMPTS))
        if check_prompts:
            check_enough_prompts(config, len(specs))
        init_dir = await asyncio.to_thread(prepare_init, config, hooks.init, runs_dir / "cache")
    else:
        plan = await plan_fork(log, config, fork, run_dir, hooks=hooks)
        init_dir = plan.init_checkpoint
    ctx = RunContext(run_id=run_id, config=config, init_checkpoint=init_dir, run_dir=run_dir,
                     parent=plan.parent if plan else None, resolved_hooks=hooks,
                     digests=await asyncio.to_thread(_dataset_digests, hooks))
    streams = ctx.streams
    await log.ensure_stream(streams.prompts, config.rollout.max_producers)  # scale room
    await log.ensure_stream(streams.trajectories, config.log.trajectory_partitions)
    await trajectory_partitions(log, ctx)  # a stream left over with another count: refused
    for stream in (streams.weights, streams.events, streams.dlq):
        await log.ensure_stream(stream, 1)
    if plan is not None:
        ctx = msgspec.structs.replace(
            ctx, fork=plan.position.point(await log.num_partitions(streams.prompts)))
    # Version 0 is stored before RunStarted, which records its digest; announced after it.
    transport, published = await _store_initial_weights(ctx)
    try:
        ctx = msgspec.structs.replace(
            ctx, digests={**ctx.digests, "init_checkpoint": published.digest})
        await log.append(streams.events, encode_event(ctx.run_started(recipe)))
        if plan is None:
            await _publish_prompts(log, ctx, specs)
        else:
            await write_fork(log, ctx, plan)
        await log.append(ctx.streams.weights,
                         encode_event(published.announce(run_id=ctx.run_id, parent=None)))
    except BaseException:
        transport.close()
        raise
    return ctx, transport


def _dataset_digests(hooks: Hooks) -> dict[str, str]:
    """sha256 of each dataset file the run reads (rendered already by `load_recipe`)."""
    sources = {"data.train": hooks.prompts, "data.eval": hooks.eval_prompts}
    return {name: source.digest for name, source in sources.items()
            if isinstance(source, DatasetPrompts)}


async def _publish_prompts(log: Log, ctx: RunContext, specs: list[PromptSpec]) -> None:
    """One Prompt per spec, round-robin over the partitions. A spec rendered to ids (a dataset
    row through the chat template) is published as its ids, its text kept as metadata
    (PROMPT_TEXT) for rewards and audit; otherwise producers encode its text."""
    partitions = await log.num_partitions(ctx.streams.prompts)
    await log.append_many([
        Append(stream=ctx.streams.prompts, partition=i % partitions, key=s.prompt_id.encode(),
               value=encode_event(_prompt(ctx, s)))
        for i, s in enumerate(specs)])


def _prompt(ctx: RunContext, spec: PromptSpec) -> Prompt:
    n = ctx.config.data.samples_per_prompt
    if spec.tokens is None:
        return Prompt(run_id=ctx.run_id, prompt_id=spec.prompt_id, text=spec.text,
                      metadata=spec.metadata, num_samples=n)
    return Prompt(run_id=ctx.run_id, prompt_id=spec.prompt_id, tokens=spec.tokens,
                  metadata={**spec.metadata, PROMPT_TEXT: spec.text}, num_samples=n)


async def _store_initial_weights(ctx: RunContext) -> tuple[WeightTransport, Published]:
    config = ctx.transport_config(keep_last=1, namespace=f"{ctx.run_id}-init")
    if config.kind == "broadcast":  # the driver is no rank of the weight group: v0 goes as files
        config = TransportConfig(kind="file", keep_last=1, directory=str(ctx.run_dir / "weights"))
    transport = config.open()
    lora = ctx.config.trainer.lora
    try:
        if lora is None:
            tensors = await asyncio.to_thread(read_safetensors, ctx.init_checkpoint)
            if ctx.config.weights.dtype == fp8.DTYPE:  # as the trainer publishes every version
                return transport, await asyncio.to_thread(
                    fp8.publish, transport, ctx.first_version, tensors)
        else:  # a LoRA run's versions are its adapters, the first one included (docs/lora.md)
            tensors = run_adapter(ctx.init_checkpoint, ModelConfig.from_file(ctx.init_checkpoint),
                                  lora.spec(), lora.init)
        published = await asyncio.to_thread(
            publish_version, transport, ctx.first_version, tensors,
            inline_max_bytes=0 if lora is None else ctx.config.weights.inline_max_bytes)
    except BaseException:
        transport.close()
        raise
    return transport, published


class RunStopped(RuntimeError):
    """The supervisor was told to stop (SIGTERM, e.g. from `streamrl down`) before the end."""


async def supervise(ctx: RunContext, log_url: str, log: Log,
                    launcher: Launcher | None = None) -> Monitor:
    """Run the trainer and producers (local processes unless another `launcher` is given) until
    the trainer finishes, acting on scale requests; show progress meanwhile. A process that fails
    ends the run with an error naming it; SIGTERM stops every process and raises `RunStopped`."""
    from streamrl.launch.disaggregated import role_env
    from streamrl.launch.local import LocalLauncher
    from streamrl.launch.supervisor import Supervisor

    launcher = launcher or LocalLauncher(log_url, ctx.run_id, role_env=role_env(ctx.config))
    supervisor = Supervisor(log, ctx, launcher, log_url)
    monitor = Monitor(log, ctx.streams.events, ctx.config.run.max_versions, ctx.run_dir,
                      writer=open_writers(ctx))  # TensorBoard, and W&B if [logging] asks
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    status = "failed"
    try:
        await supervisor.start()
        with monitor.progress:
            while (code := await supervisor.step()) is None and not stop.is_set():
                await monitor.poll(timeout_s=0.5)
            await monitor.poll(timeout_s=0.5)
        if stop.is_set() and code is None:
            status = "stopped"
            raise RunStopped(f"run {ctx.run_id} was stopped before it finished")
        if code != 0:
            raise RuntimeError(f"the trainer exited with code {code}")
        status = "finished"
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await supervisor.close(status)
        monitor.close()
    return monitor
