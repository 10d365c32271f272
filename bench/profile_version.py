"""Where the main job's time goes: `streamrl run` of the gsm8k recipe, timed from its log.

    python -m bench.profile_version                        # this checkout, 8 versions
    python -m bench.profile_version --versions 8 --checkout /tmp/before --checkout .

Each `--checkout` (a git worktree of another commit, e.g. `git worktree add /tmp/before HEAD~1`)
runs the same recipe on the same warm start (`recipes.gsm8k.prepare`, cached) one after the
other, so a change is measured before/after in one invocation and under the same load. The
recipe is `recipes/gsm8k/recipe.toml` without its evaluations (periodic and before/after: they
are the recipe's, not the pipeline's). From the launch of `streamrl run` it reports when the
run's first event was written (`RunStarted`), when the producer joined, when the first sample's
generation began (its `started_at`: the prompt's prefill, i.e. the first generated token less
one prefill) and when the first version was committed; per version: the interval between
committed versions (steady: the median after the first two), the learner's `step_ms` and the
weight copy. Writes the `profile_version` section of BENCHMARKS.md (`--no-write`: print only).
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
from pathlib import Path

import msgspec

from bench.common import ROOT, machine_info, replace_section

RECIPE = ROOT / "recipes" / "gsm8k" / "recipe.toml"


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
    path = directory / "recipe.toml"
    path.write_text(text + "\n")
    return path


def run_streamrl(checkout: Path, work: Path, versions: int, *, run_id: str,
                 threads: int = 1, max_staleness: int | None = None) -> tuple[float, float, Path]:
    """Launch `streamrl run` from `checkout` (cwd ROOT: the warm start's relative paths);
    returns (launch time, exit time, log dir)."""
    recipe = derived_recipe(work, max_staleness=max_staleness)
    log_dir = work / "log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(checkout)}
    launched = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "streamrl.cli", "run", str(recipe), "--run", run_id, "--log",
         str(log_dir), "--runs-dir", str(work / "runs"), "--max-versions", str(versions)],
        cwd=ROOT, env=env, capture_output=True, text=True)
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
    return Timeline(checkout=str(checkout), wall_s=ended - launched, load_before=load_before,
                    load_after=os.getloadavg()[0], **figures)


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


def render(timelines: list[Timeline], versions: int) -> str:
    info = machine_info()
    lines = [
        f"{info['date']} · {info['machine']} · Python {info['python']} · "
        f"`python -m bench.profile_version --versions {versions}`; other jobs shared the 2 "
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
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--versions", type=int, default=8)
    p.add_argument("--checkout", action="append", type=Path, default=None,
                   help="a checkout to run (repeat; default: this one)")
    p.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    args = p.parse_args()
    from recipes.gsm8k.prepare import prepare

    prepare(ROOT / "runs" / "gsm8k")
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    timelines = []
    for i, checkout in enumerate(checkouts):
        timelines.append(profile(checkout, args.versions, i))
        print(msgspec.json.encode(timelines[-1]).decode(), flush=True)
    text = render(timelines, args.versions)
    print(text)
    if not args.no_write:
        replace_section("profile_version", text)


if __name__ == "__main__":
    main()
