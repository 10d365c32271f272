"""Where the main job's time goes: `streamrl run` of the gsm8k recipe, timed from its log.

    python -m bench.profile_version                        # this checkout, 8 versions
    python -m bench.profile_version --versions 8 --checkout /tmp/before --checkout .
    python -m bench.profile_version --versions 3 --repeat 3 --checkout /tmp/before --checkout .

Each `--checkout` (a git worktree of another commit, e.g. `git worktree add /tmp/before HEAD~1`)
runs the same recipe on the same warm start (`recipes.gsm8k.prepare`, cached) one after the
other, so a change is measured before/after in one invocation and under the same load. The
recipe is `recipes/gsm8k/recipe.toml` without its evaluations (periodic and before/after: they
are the recipe's, not the pipeline's). From the launch of `streamrl run` it reports when the
run's first event was written (`RunStarted`), when the producer joined, when the first sample's
generation began (its `started_at`: the prompt's prefill, i.e. the first generated token less
one prefill) and when the first version was committed; per version: the interval between
committed versions (steady: the median after the first two), the learner's `step_ms` and the
weight copy. `--repeat N` runs the checkouts N times, interleaved (before, after, before, ...),
and adds a line of each checkout's medians, first against last (other jobs' load varies).
Writes the `profile_version` section of BENCHMARKS.md (`--no-write`: print only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from bench.common import ROOT, machine_info, replace_section

RECIPE = ROOT / "recipes" / "gsm8k" / "recipe.toml"
_NOW = datetime(2026, 12, 8, tzinfo=UTC)


class Timeline(msgspec.Struct, kw_only=True):
    """Seconds from the launch of `streamrl run`; per-version figures in ms."""

    checkout: str
    run_started_s: float
    producer_joined_s: float
    first_token_s: float
    """The earliest sample's `started_at` (its prefill began)."""
    first_version_s: float
    wall_s: float
    """Launch to exit of `streamrl run`."""
    version_ms: list[float]
    """Interval between consecutive committed versions (TrainStep records)."""
    step_ms: list[float]
    weights_copy_ms: list[float]
    load_before: float
    load_after: float

    @property
    def steady_ms(self) -> float:
        tail = self.version_ms[2:] or self.version_ms
        return statistics.median(tail) if tail else float("nan")


def derived_recipe(directory: Path, *, keep_evals: bool = False,
                   max_staleness: int | None = None) -> Path:
    """recipe.toml without periodic evaluations or the before/after evaluator (unless kept);
    with `max_staleness`, AdmissionControl's bound replaced (0: synchronous)."""
    text = RECIPE.read_text()
    if max_staleness is not None:
        old = "options = { max_staleness = 2 }"
        assert old in text, f"{RECIPE} no longer has {old!r}"
        text = text.replace(old, f"options = {{ max_staleness = {max_staleness} }}")
    if not keep_evals:
        text = text.replace("every_versions = 10", "every_versions = 0")
        text = "\n".join(line for line in text.splitlines()
                         if not line.startswith("evaluate = "))
    text = text.replace('"runs/gsm8k/', f'"{ROOT}/runs/gsm8k/')  # run from any checkout
    path = directory / "recipe.toml"
    path.write_text(text + "\n")
    return path


def run_streamrl(checkout: Path, work: Path, versions: int, *, run_id: str,
                 threads: int = 1, max_staleness: int | None = None) -> tuple[float, float, Path]:
    """Launch `streamrl run` from `checkout` (its cwd: `python -m` puts the cwd first on
    sys.path); returns (launch time, exit time, log dir)."""
    recipe = derived_recipe(work, max_staleness=max_staleness)
    log_dir = work / "log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(checkout)}
    launched = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "streamrl.cli", "run", str(recipe), "--run", run_id, "--log",
         str(log_dir), "--runs-dir", str(work / "runs"), "--max-versions", str(versions)],
        cwd=checkout, env=env, capture_output=True, text=True)
    ended = time.time()
    if out.returncode:
        sys.exit(f"streamrl run ({checkout}) failed:\n{out.stderr[-3000:]}\n{out.stdout[-3000:]}")
    return launched, ended, log_dir


async def read_timeline(log_dir: Path, run_id: str, launched: float) -> dict:
    from streamrl.log import open_log
    from streamrl.records import decode_trajectory_record
    from streamrl.schemas import ProducerJoined, RunStarted, TrainStep, decode_event

    async with open_log(str(log_dir)) as log:
        events = await log.read_all(f"{run_id}.events", 0)
        first_traj = await log.read(f"{run_id}.trajectories", 0, 0, max_records=4)
    out: dict = {"version_ms": [], "step_ms": [], "weights_copy_ms": []}
    last = None
    for record in events:
        event = decode_event(record.value, "events")
        t = record.timestamp_ms / 1000 - launched
        if isinstance(event, RunStarted):
            out["run_started_s"] = t
        elif isinstance(event, ProducerJoined) and "producer_joined_s" not in out:
            out["producer_joined_s"] = t
        elif isinstance(event, TrainStep):
            out.setdefault("first_version_s", t)
            if last is not None:
                out["version_ms"].append((t - last) * 1000)
            last = t
            out["step_ms"].append(event.metrics.get("step_ms", float("nan")))
            out["weights_copy_ms"].append(event.metrics.get("weights_copy_ms", float("nan")))
    starts = []
    for record in first_traj:
        rows = decode_trajectory_record(record, vocab_size=1 << 20)
        starts += [ts.timestamp() for ts in rows.column("started_at").to_pylist()]
    out["first_token_s"] = min(starts) - launched
    return out


def profile(checkout: Path, versions: int, index: int) -> Timeline:
    with tempfile.TemporaryDirectory(prefix="profile-version-") as tmp:
        run_id = f"profile-{index}-{time.strftime('%H%M%S')}"
        load_before = os.getloadavg()[0]
        launched, ended, log_dir = run_streamrl(checkout, Path(tmp), versions, run_id=run_id)
        figures = asyncio.run(read_timeline(log_dir, run_id, launched))
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return Timeline(checkout=f"{checkout} ({commit or 'no git'})", wall_s=ended - launched,
                    load_before=load_before,
                    load_after=os.getloadavg()[0], **figures)


_LOAD_CHECKPOINT = """
import sys, time
import torch
from streamrl.models import load_checkpoint
start = time.perf_counter()
load_checkpoint(sys.argv[1])
print(time.perf_counter() - start)
"""


def load_checkpoint_s(checkout: Path) -> float:
    """A fresh process's first `load_checkpoint` of the warm start, torch already imported."""
    # cwd = the checkout: `python -c` puts the cwd first on sys.path, before PYTHONPATH
    out = subprocess.run([sys.executable, "-c", _LOAD_CHECKPOINT,
                          str(ROOT / "runs" / "gsm8k" / "model")], cwd=checkout, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(checkout)},
                         capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def learner_ab(num_steps: int = 6) -> dict[str, float]:
    """The learner's step on main-job-shaped batches (16 prompts x 8, ~60 positions) with the
    proximal forward on its own (before) and from the one policy pass (after), alternating in
    one process; the weights must stay bit-identical."""
    import numpy as np
    import torch

    from streamrl.consumers.trainer.learner import Learner, LearnerSetup
    from streamrl.models import load_checkpoint
    from streamrl.recipe.config import load_recipe
    from streamrl.schemas import Sample, samples_to_batch

    torch.set_num_threads(1)
    config, hooks = load_recipe(str(RECIPE))
    rng = np.random.default_rng(0)

    def rows(version: int) -> list:
        out = []
        for g in range(16):
            prompt = rng.integers(3, 440, 40).astype(np.int32)
            samples = []
            for k in range(8):
                n = int(rng.integers(10, 18))
                samples.append(Sample(
                    run_id="ab", sample_id=f"{version}-{g}-{k}", group_id=f"{version}-{g}",
                    prompt_id=f"p{g}", sample_index=k, producer_id="ab", policy_version=version,
                    prompt_tokens=prompt, response_tokens=rng.integers(3, 440, n).astype(np.int32),
                    logprobs=np.full(n, -1.5, np.float32), loss_mask=np.ones(n, bool),
                    reward=float(rng.integers(0, 2)), finish_reason="stop", seed=k,
                    started_at=_NOW, finished_at=_NOW,
                    response_versions=np.full(n, version, np.uint32)))
            out.append(samples_to_batch(samples))
        return out

    setup = LearnerSetup.of_run(config, hooks)
    before = Learner(load_checkpoint(ROOT / "runs" / "gsm8k" / "model"), setup)
    after = Learner(load_checkpoint(ROOT / "runs" / "gsm8k" / "model"), setup)
    before._one_policy_pass = lambda: False  # type: ignore[method-assign]
    times: dict[str, list[float]] = {"before": [], "after": []}
    for version in range(num_steps):
        batch = rows(version)
        for name, learner in (("before", before), ("after", after)):
            start = time.perf_counter()
            learner.step(batch, [1.0] * 128, version)
            times[name].append(time.perf_counter() - start)
    identical = all(torch.equal(a, b) for a, b in zip(
        before.hf_state_dict().values(), after.hf_state_dict().values(), strict=True))
    assert identical, "one policy pass changed the weights"
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


STARTUP = (("RunStarted", "run_started_s"), ("producer joined", "producer_joined_s"),
           ("first token", "first_token_s"), ("first version", "first_version_s"))


def before_after(timelines: list[Timeline]) -> str:
    """Medians per checkout, the first checkout's against the last's."""
    by: dict[str, list[Timeline]] = {}
    for t in timelines:  # by path: a checkout's commit may move between its runs
        by.setdefault(t.checkout.split(" (")[0], []).append(t)
    (first, a), (last, b) = next(iter(by.items())), list(by.items())[-1]

    def med(rows: list[Timeline], key: str) -> float:
        return statistics.median(getattr(t, key) for t in rows)

    parts = [f"{name} {med(a, key):.1f} → {med(b, key):.1f} s" for name, key in STARTUP]
    parts.append(f"steady {med(a, 'steady_ms'):.0f} → {med(b, 'steady_ms'):.0f} ms/version")
    return (f"Before → after (medians of {len(a)} and {len(b)} runs; before: {first}, after: "
            f"{last}): " + ", ".join(parts) + ".")


def render(timelines: list[Timeline], versions: int, repeat: int = 1) -> str:
    info = machine_info()
    flags = f"--versions {versions}" + (f" --repeat {repeat}" if repeat > 1 else "")
    lines = [
        f"{info['date']} · {info['machine']} · Python {info['python']} · "
        f"`python -m bench.profile_version {flags}`; other jobs shared the 2 "
        "cores (load average per row: compare rows of one run, not across runs)", "",
        "`recipes/gsm8k/recipe.toml` without evaluations, file log, one producer and the "
        "trainer (1 torch thread each); seconds from the launch of `streamrl run`.", "",
        "| checkout | RunStarted s | producer joined s | first token s | first version s | "
        "steady ms/version | learner step ms | weight copy ms | wall s | load |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for t in timelines:
        lines.append(
            f"| {t.checkout} | {t.run_started_s:.1f} | {t.producer_joined_s:.1f} | "
            f"{t.first_token_s:.1f} | {t.first_version_s:.1f} | {t.steady_ms:.0f} | "
            f"{_med(t.step_ms)} | {_med(t.weights_copy_ms)} | {t.wall_s:.1f} | "
            f"{t.load_before:.1f} → {t.load_after:.1f} |")
    if len({t.checkout for t in timelines}) > 1:
        lines += ["", before_after(timelines)]
    return "\n".join(lines)


def ab(before: Path, after: Path, *, write: bool) -> None:
    load = os.getloadavg()[0]
    ckpt = {name: statistics.median(load_checkpoint_s(c.resolve()) for _ in range(3))
            for name, c in (("before", before), ("after", after))}
    step = learner_ab()
    info = machine_info()
    text = "\n".join([
        f"{info['date']} · {info['machine']} · Python {info['python']} · "
        f"`python -m bench.profile_version --ab BEFORE AFTER` · load average {load:.1f} → "
        f"{os.getloadavg()[0]:.1f} (other jobs shared the 2 cores)", "",
        "| overhead | before | after |", "|---|---|---|",
        f"| a fresh process's first `load_checkpoint` of the warm start (meta init skipped; "
        f"median of 3) | {ckpt['before']:.2f} s | {ckpt['after']:.2f} s |",
        f"| learner step, 16 prompts x 8 samples (proximal logprobs from the one policy pass; "
        f"weights bit-identical; median of 6) | {step['before']:.0f} ms | "
        f"{step['after']:.0f} ms |"])
    print(text)
    if write:
        replace_section("profile_version_ab", text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--versions", type=int, default=8)
    p.add_argument("--checkout", action="append", type=Path, default=None,
                   help="a checkout to run (repeat; default: this one)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the checkouts this many times, interleaved")
    p.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    p.add_argument("--ab", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), default=None,
                   help="instead: the two overhead fixes before/after in one run: a fresh "
                        "process's load_checkpoint from checkouts BEFORE and AFTER, and the "
                        "learner step with and without its separate proximal forward")
    args = p.parse_args()
    from recipes.gsm8k.prepare import prepare

    prepare(ROOT / "runs" / "gsm8k")
    if args.ab is not None:
        ab(*args.ab, write=not args.no_write)
        return
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    timelines = []
    for i, checkout in enumerate(checkouts * args.repeat):
        timelines.append(profile(checkout, args.versions, i))
        print(msgspec.json.encode(timelines[-1]).decode(), flush=True)
    text = render(timelines, args.versions, args.repeat)
    print(text)
    if not args.no_write:
        replace_section("profile_version", text)


if __name__ == "__main__":
    main()
