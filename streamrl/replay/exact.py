"""Bit-exact replay: rebuild a run's trainer from what the log recorded and check that every
weight version comes out bit for bit as announced.

    report = await replay_exact(log, "arithmetic-ci-20261125-101500", on_version=bar.update)
    report.ok   # "reproduced 40/40 versions bit-exactly"

The trainer is built from the run's `RunStarted` (config, seed) and its initial checkpoint, and
fed exactly the recorded batches (`BatchFormed` positions and loss weights, in log order) with
`consumers.trainer.resume.replay_batches`, the code a restarted trainer resumes with. Version 0 is
checked too (the initial checkpoint against the announced digest). Replay only reads: nothing is
written to the log or the run's files.

What bit-exactness needs (and the trainer guarantees): a learner step that reads no clock and no
RNG (no dropout in the models), the same torch intra-op thread count as the trainer (the trainer
runs with 1, the default here; reductions split over another count add in another order), and
the same torch build and CPU kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import torch

from consumers.trainer.__main__ import learner_config
from consumers.trainer.learner import Learner
from consumers.trainer.resume import History, read_history, replay_batches
from streamrl.log import Log
from streamrl.replay.diff import TensorDiff, announced_tensors, tensor_diffs
from streamrl.replay.runs import Recorder, ReplayError, existing_run, start_derived
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
    num_versions: int  # versions 1..until that were to be reproduced
    num_reproduced: int
    divergence: Divergence | None
    seconds: float
    threads: int
    recorded_as: str | None = None  # the derived run `--record` wrote

    @property
    def ok(self) -> bool:
        return self.divergence is None and self.num_reproduced == self.num_versions

    @property
    def headline(self) -> str:
        if self.ok:
            return (f"reproduced {self.num_reproduced}/{self.num_versions} versions "
                    f"bit-exactly")
        assert self.divergence is not None
        return (f"version {self.divergence.version} diverged (reproduced "
                f"{self.num_reproduced}/{self.num_versions} before it)")


def check_complete(history: History, until: int) -> None:
    """Every version 1..until needs its batch and its announcement in the log."""
    trained = {b.policy_version + 1 for b in history.batches}
    missing = [v for v in range(1, until + 1) if v not in trained or v not in history.announced]
    if missing:
        raise ReplayError(f"the log lacks the batch or announcement of version(s) {missing[:8]}; "
                          "cannot replay past them (use --until)")


async def replay_exact(log: Log, run_id: str, *, until: int | None = None,
                       on_version: Callable[[int, int], None] | None = None,
                       record_as: str | None = None) -> ReplayReport:
    """Replay versions 1..until (default: the newest announced) of `run_id` from its initial
    checkpoint; stops at the first version whose digest differs. `on_version(version, until)`
    is called after each reproduced version. With `record_as`, the replayed versions are also
    written as a new run (`RunParent(relation="replay")`); the recorded run is never written."""
    t0 = time.monotonic()
    ctx = await existing_run(log, run_id)
    history = await read_history(log, ctx)
    until = history.version if until is None else until
    if not 0 <= until <= history.version:
        raise ReplayError(f"--until {until}: run {run_id!r} announced versions 0.."
                          f"{history.version}")
    check_complete(history, until)
    if not ctx.init_checkpoint.exists():
        raise ReplayError(f"run {run_id!r}: its initial checkpoint {ctx.init_checkpoint} no "
                          "longer exists; replay starts from it")
    torch.manual_seed(ctx.config.run.seed)  # as the trainer does; a step reads no RNG anyway
    learner = Learner.from_checkpoint(ctx.init_checkpoint, learner_config(ctx.config))
    report = ReplayReport(run_id=run_id, num_versions=until, num_reproduced=0, divergence=None,
                          seconds=0.0, threads=torch.get_num_threads(), recorded_as=record_as)
    recorder, transport = None, None
    if record_as is not None:
        derived, transport = await start_derived(log, ctx, run_id=record_as, config=ctx.config,
                                                 relation="replay")
        recorder = Recorder(log, derived, transport)
    try:
        await _replay(log, learner, history, until, report, recorder, on_version)
    finally:
        if transport is not None:
            transport.close()
    report.seconds = time.monotonic() - t0
    return report


async def _replay(log: Log, learner: Learner, history: History, until: int,
                  report: ReplayReport, recorder: Recorder | None,
                  on_version: Callable[[int, int], None] | None) -> None:
    digest = weights_digest(learner.hf_state_dict())
    if 0 in history.announced and digest != history.announced[0].digest:
        report.divergence = _divergence(learner, history, 0, "", digest)
    else:
        async for step in replay_batches(log, learner, history, start=0, until=until):
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
