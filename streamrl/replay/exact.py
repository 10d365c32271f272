"""Bit-exact replay: rebuild a run's trainer from what the log recorded and check that every
weight version comes out bit for bit as announced.

    report = await replay_exact(log, "arithmetic-ci-20261125-101500", on_version=bar.update)
    report.ok   # "reproduced 40/40 versions bit-exactly"

The trainer is built from the run's `RunStarted` (config, seed) and its initial checkpoint, and
fed exactly the recorded batches (`BatchFormed` positions and loss weights, in log order) with
`streamrl.consumers.trainer.resume.replay_batches`, the code a restarted trainer resumes with.
Version 0 is checked too (the initial checkpoint against the announced digest). Replay only reads:
nothing is written to the log or the run's files.

What bit-exactness needs (and the trainer guarantees): a learner step that reads no clock and no
RNG (no dropout in the models), the same torch intra-op thread count as the trainer (the trainer
runs with 1, the default here; reductions split over another count add in another order), and
the same torch build and CPU kind.

A fork (`streamrl run --fork PARENT@V`) starts at version V from the state it recorded (the
parent's learner at V, optimizer included, under runs/<fork>/fork-v<V>/); its replay checks V
against that state and reproduces V+1..N. Versions up to V are the parent's: `chain=True`
replays them first (`replay_exact(log, PARENT, until=V)`, recursively for a fork of a fork) and
continues the fork from the learner that parent replay produced, not from the saved state.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import torch

from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.resume import History, read_history, replay_batches
from streamrl.log import Log
from streamrl.recipe.context import RunContext
from streamrl.replay.diff import TensorDiff, announced_tensors, tensor_diffs
from streamrl.replay.runs import Recorder, ReplayError, existing_run, start_derived
from streamrl.schemas import RunParent
from streamrl.weights import weights_digest


class Divergence(msgspec.Struct, kw_only=True, frozen=True):
    """The first version whose replayed weights differ from the announced ones."""

    version: int
    batch_id: str  # the recorded batch that trained it ("" for version 0)
    digest: str  # what the replay produced
    expected: str  # what the run announced
    source: str  # where the recorded tensors came from, or that only the digest is known
    diffs: list[TensorDiff]  # empty when only the digest is known


class ReplayReport(msgspec.Struct, kw_only=True):
    run_id: str
    num_versions: int  # versions first_version+1..until that were to be reproduced
    num_reproduced: int
    divergence: Divergence | None
    seconds: float
    threads: int
    recorded_as: str | None = None  # the derived run `--record` wrote
    first_version: int = 0  # a fork's first version (its parent's), checked, not trained
    forked_from: RunParent | None = None  # a fork's parent: versions <= first_version are its
    chained: list[ReplayReport] = []  # with chain=True: the parents' replays, oldest first

    @property
    def ok(self) -> bool:
        return (self.divergence is None and self.num_reproduced == self.num_versions
                and all(r.ok for r in self.chained))

    @property
    def headline(self) -> str:
        if self.ok:
            return (f"reproduced {self.num_reproduced}/{self.num_versions} versions "
                    f"bit-exactly")
        assert self.divergence is not None
        return (f"version {self.divergence.version} diverged (reproduced "
                f"{self.num_reproduced}/{self.num_versions} before it)")


def check_complete(history: History, until: int, first: int = 0) -> None:
    """Every version first+1..until needs its batch and its announcement in the log."""
    trained = {b.policy_version + 1 for b in history.batches}
    missing = [v for v in range(first + 1, until + 1)
               if v not in trained or v not in history.announced]
    if missing:
        raise ReplayError(f"the log lacks the batch or announcement of version(s) {missing[:8]}; "
                          "cannot replay past them (use --until)")


async def replay_exact(log: Log, run_id: str, *, until: int | None = None,
                       on_version: Callable[[int, int], None] | None = None,
                       record_as: str | None = None, chain: bool = False) -> ReplayReport:
    """Replay versions first+1..until (default: the newest announced) of `run_id` from its
    initial checkpoint (version 0's, or a fork's starting state); stops at the first version
    whose digest differs. `on_version(version, until)` is called after each reproduced version.
    With `record_as`, the replayed versions are also written as a new run
    (`RunParent(relation="replay")`); the recorded run is never written. With `chain`, a fork's
    parent is replayed up to the fork version first (see the module docstring)."""
    t0 = time.monotonic()
    report, _ = await _replay_run(log, run_id, until, chain, on_version, record_as)
    report.seconds = time.monotonic() - t0
    return report


async def _replay_run(log: Log, run_id: str, until: int | None, chain: bool,
                      on_version: Callable[[int, int], None] | None, record_as: str | None,
                      ) -> tuple[ReplayReport, Learner | None]:
    """The report, and the learner where the replay stopped (None if it never started)."""
    ctx = await existing_run(log, run_id)
    history = await read_history(log, ctx)
    first = ctx.first_version
    until = history.version if until is None else until
    if not first <= until <= history.version:
        raise ReplayError(f"--until {until}: run {run_id!r} announced versions {first}.."
                          f"{history.version}")
    check_complete(history, until, first)
    if record_as is not None and ctx.fork is not None:
        raise ReplayError(f"--record: run {run_id!r} is a fork; recording a fork's replay as a "
                          "new run is not supported (replay it without --record)")
    report = ReplayReport(run_id=run_id, num_versions=until - first, num_reproduced=0,
                          divergence=None, seconds=0.0, threads=torch.get_num_threads(),
                          recorded_as=record_as, first_version=first,
                          forked_from=ctx.parent if ctx.fork is not None else None)
    learner = await _first_learner(log, ctx, report, chain, on_version)
    if learner is None:
        return report, None  # the parent's replay diverged: the fork's start is not reproduced
    recorder, transport = None, None
    if record_as is not None:
        derived, transport = await start_derived(log, ctx, run_id=record_as, config=ctx.config,
                                                 hooks=ctx.hooks,
                                                 relation="replay")
        recorder = Recorder(log, derived, transport)
    try:
        await _replay(log, learner, history, until, report, recorder, on_version)
    finally:
        if transport is not None:
            transport.close()
    return report, learner


async def _first_learner(log: Log, ctx: RunContext, report: ReplayReport, chain: bool,
                         on_version: Callable[[int, int], None] | None) -> Learner | None:
    """The learner at the run's first version: its recorded initial checkpoint, or (a fork,
    `chain`) the parent's replayed learner at the fork version with the fork's trainer
    settings, as `streamrl.run.fork.fork_learner` made it. None if the parent diverged."""
    torch.manual_seed(ctx.config.run.seed)  # as the trainer does; a step reads no RNG anyway
    parent = report.forked_from
    if chain and parent is not None:
        t0 = time.monotonic()
        inner, learner = await _replay_run(log, parent.run_id, parent.version, True,
                                           on_version, None)
        inner.seconds = time.monotonic() - t0
        report.chained = [*inner.chained, inner]
        inner.chained = []
        if learner is None or not inner.ok:
            return None
        # as fork_learner does
        return learner.reconfigured(LearnerSetup.of_run(ctx.config, ctx.hooks,
                                                        reference=ctx.init_checkpoint))
    if not ctx.init_checkpoint.exists():
        hint = " (or replay with --chain, from the parent's log)" if parent else ""
        raise ReplayError(f"run {ctx.run_id!r}: its initial checkpoint {ctx.init_checkpoint} "
                          f"no longer exists; replay starts from it{hint}")
    return Learner.from_checkpoint(ctx.init_checkpoint, LearnerSetup.of_run(
        ctx.config, ctx.hooks, reference=ctx.init_checkpoint))


async def _replay(log: Log, learner: Learner, history: History, until: int,
                  report: ReplayReport, recorder: Recorder | None,
                  on_version: Callable[[int, int], None] | None) -> None:
    first = report.first_version
    digest = weights_digest(learner.hf_state_dict())
    if first in history.announced and digest != history.announced[first].digest:
        report.divergence = _divergence(learner, history, first, "", digest)
    else:
        async for step in replay_batches(log, learner, history, start=first, until=until):
            if not step.matches:
                report.divergence = _divergence(learner, history, step.version,
                                                step.batch.batch_id, step.digest)
                break
            report.num_reproduced += 1
            if recorder is not None:
                await recorder.record(step.batch, learner, step.metrics)
            if on_version is not None:
                on_version(step.version, until)


def _divergence(learner: Learner, history: History, version: int, batch_id: str,
                digest: str) -> Divergence:
    announced = history.announced.get(version)
    recorded, source = announced_tensors(announced, history.checkpoints)
    diffs = tensor_diffs(learner.hf_state_dict(), recorded) if recorded is not None else []
    return Divergence(version=version, batch_id=batch_id, digest=digest,
                      expected=announced.digest if announced else "", source=source,
                      diffs=diffs)
