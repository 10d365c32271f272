"""Forking a run: `streamrl run RECIPE --fork RUN@VERSION` starts a new run from RUN's weight
version VERSION and its position in the log, without regenerating RUN's past.

    spec = parse_fork_spec("arithmetic-ci-20261125@20")
    plan = await plan_fork(log, config, spec, run_dir)      # checks, weights, log position
    ... RunStarted(parent=plan.parent) ...; await write_fork(log, ctx, plan)

Versions continue: the fork's first announced version is VERSION (the parent's digest, no
parent version of its own: its lineage is `RunStarted.parent`), and it trains VERSION+1 up to the
recipe's `run.max_versions`. The weights are the parent's at VERSION rebuilt with
`streamrl.consumers.trainer.resume.rebuild` (checkpoint + recorded batches, digest-checked against
the announcement), optimizer state included, so training continues as the parent's would have; the
fork's own trainer settings (learning rate, weight decay) replace the parent's in that state.

The log position is described in `streamrl/run/fork_position.py`: prompts the parent trained or
deliberately dropped before VERSION are not given again; trajectories it had produced with
weights <= VERSION but not yet judged are carried over and trained first; everything else the
parent still had to do is given to the fork's producers.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import msgspec
import torch

from streamrl.checkpoints import fork_start_dir
from streamrl.consumers.trainer.learner import LearnerSetup
from streamrl.consumers.trainer.resume import History, read_history, rebuild
from streamrl.hooks.run import ModelInit
from streamrl.log import Log
from streamrl.models.checkpoint import read_safetensors
from streamrl.models.config import ModelConfig
from streamrl.recipe.config import RunConfig
from streamrl.recipe.context import RunContext, load_run_context
from streamrl.recipe.hooks import Hooks, resolve_hooks
from streamrl.run.fork_position import ForkPosition, plan_position, write_position
from streamrl.run.init import prepare_init
from streamrl.schemas import RunParent
from streamrl.streams import RunStreams
from streamrl.weights import weights_digest

_SPEC = re.compile(r"^(?P<run>[A-Za-z0-9_-]+)@(?P<version>\d+)$")


class ForkError(ValueError):
    """A fork that cannot start; the message says what is wrong and how to fix it."""


class ForkSpec(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    version: int


class ForkPlan(msgspec.Struct, kw_only=True):
    parent: RunParent
    parent_ctx: RunContext
    init_checkpoint: Path  # the parent's weights and optimizer state at `parent.version`
    position: ForkPosition


def parse_fork_spec(text: str) -> ForkSpec:
    """`RUN@VERSION` -> ForkSpec; ForkError for anything else."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise ForkError(f"--fork {text!r} is not RUN@VERSION (e.g. arithmetic-ci-20261125@20: "
                        "a run id of letters, digits, '_' and '-', then '@' and a version >= 0)")
    return ForkSpec(run_id=match["run"], version=int(match["version"]))


async def plan_fork(log: Log, config: RunConfig, spec: ForkSpec, run_dir: Path, *,
                    hooks: Hooks | None = None) -> ForkPlan:
    """Check that `config` may fork `spec`, rebuild the parent's learner at the fork version into
    `run_dir/fork-v<VERSION>` and work out the log position. Writes nothing to the log. `hooks`
    are `config`'s when the caller resolved them already."""
    parent_ctx = await _parent_context(log, spec.run_id)
    history = await read_history(log, parent_ctx)
    _check_version(spec, history, config)
    init = (hooks or resolve_hooks(config)).init
    await asyncio.to_thread(check_same_model, parent_ctx.config, config, init, parent_ctx, spec)
    _check_same_data(parent_ctx.config, config, spec)
    init_dir = fork_start_dir(run_dir, spec.version)
    await fork_learner(log, parent_ctx, history, spec.version, config, init_dir)
    position = await plan_position(log, parent_ctx, history, spec.version)
    return ForkPlan(parent=RunParent(run_id=spec.run_id, version=spec.version, relation="fork"),
                    parent_ctx=parent_ctx, init_checkpoint=init_dir, position=position)


async def write_fork(log: Log, ctx: RunContext, plan: ForkPlan) -> None:
    """The fork's prompts and carried trajectories (after its RunStarted)."""
    await write_position(log, ctx, plan.position)


async def _parent_context(log: Log, run_id: str) -> RunContext:
    if RunStreams(run_id).events not in await log.list_streams(run_id):
        raise ForkError(f"--fork {run_id}@...: no run {run_id!r} in {log.url} "
                        "(see `streamrl inspect`, or pass the parent's --log)")
    return await load_run_context(log, run_id, timeout_s=5.0)


def _check_version(spec: ForkSpec, history: History, config: RunConfig) -> None:
    if spec.version not in history.announced:
        announced = sorted(history.announced)
        span = f"{announced[0]}..{announced[-1]}" if announced else "none"
        raise ForkError(f"--fork {spec.run_id}@{spec.version}: run {spec.run_id!r} never "
                        f"announced version {spec.version} (announced: {span})")
    if config.run.max_versions <= spec.version:
        raise ForkError(f"--fork {spec.run_id}@{spec.version}: run.max_versions "
                        f"({config.run.max_versions}) must be greater than the fork version; "
                        "set it in the recipe or with --max-versions")


def check_same_model(parent: RunConfig, config: RunConfig, init: ModelInit,
                     parent_ctx: RunContext, spec: ForkSpec) -> None:
    """The fork trains the parent's tensors, so the recipe's model must have the same shape.
    The same `model` section is the same model; another one is built (cached) and compared."""
    if parent.model == config.model:
        return
    ours = ModelConfig.from_file(prepare_init(config, init, parent_ctx.run_dir.parent / "cache"))
    theirs = ModelConfig.from_file(parent_ctx.init_checkpoint)
    diff = {f: (getattr(theirs, f), getattr(ours, f)) for f in ours.__struct_fields__
            if getattr(theirs, f) != getattr(ours, f)}
    if diff:
        detail = ", ".join(f"{f}: parent {a!r}, recipe {b!r}" for f, (a, b) in diff.items())
        raise ForkError(f"--fork {spec.run_id}@{spec.version}: the recipe's model differs from "
                        f"the parent's ({detail}); a fork continues the parent's weights, so "
                        "its [model] section must describe the same model")


def _check_same_data(parent: RunConfig, config: RunConfig, spec: ForkSpec) -> None:
    """A fork continues the parent's prompts (and may train its samples), so the data section
    (tokenizer, prompt source, group size) must be the parent's."""
    theirs, ours = msgspec.to_builtins(parent.data), msgspec.to_builtins(config.data)
    diff = [f"data.{k}: parent {theirs[k]!r}, recipe {ours.get(k)!r}" for k in theirs
            if theirs[k] != ours.get(k)]
    if diff:
        raise ForkError(f"--fork {spec.run_id}@{spec.version}: {'; '.join(diff)}. A fork "
                        "continues the parent's prompts and samples; keep its [data] section")


async def fork_learner(log: Log, parent_ctx: RunContext, history: History, version: int,
                       config: RunConfig, out_dir: Path) -> str:
    """Save the parent's learner at `version` (model + optimizer state, the optimizer's
    hyperparameters replaced by `config`'s trainer settings) as an HF checkpoint in `out_dir`;
    returns its digest, which equals the parent's announced one (else ForkError)."""
    torch.manual_seed(parent_ctx.config.run.seed)
    learner = await rebuild(log, parent_ctx, LearnerSetup.of_run(
        parent_ctx.config, parent_ctx.hooks, reference=parent_ctx.init_checkpoint),
                            history, until=version)
    # Saved, not stepped: only the fork's optimizer settings matter, so the parent's hooks do.
    ours = learner.reconfigured(LearnerSetup.of_run(config, parent_ctx.hooks))
    await asyncio.to_thread(ours.save, out_dir)
    digest = weights_digest(await asyncio.to_thread(read_safetensors, out_dir))
    expected = history.announced[version].digest
    if digest != expected:
        raise ForkError(f"rebuilding {parent_ctx.run_id}@{version} gave digest {digest[:16]}…, "
                        f"the run announced {expected[:16]}…; its checkpoint or log is damaged")
    return digest
