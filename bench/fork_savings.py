"""What a fork saves: a recipe run in full (the baseline, versions 0 -> N) against a fork of that
same run at version K run to N, measured on the same machine in the same invocation.

    .venv/bin/python -m bench.fork_savings                         # recipe_ci.toml, fork at 20
    .venv/bin/python -m bench.fork_savings --recipe recipes/arithmetic/recipe.toml --fork-at 100

Both runs are real `streamrl run` processes on the embedded file log. Reported: wall time of each
command split into phases from the runs' event timestamps (setup, process start, training,
final eval), the held-out eval before and after, and the parent's training time to version K.
The headline ratio is the fork's training time over the full run's. Run it twice in one
--workdir to have the warm start cached for both. Results go to BENCHMARKS.md,
bench/results/fork_savings.json and .png (batch reward per version of both runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_info
from streamrl import aio
from streamrl.log import open_log
from streamrl.schemas import RunStarted, TrainStep, WeightVersionLoaded, decode_event
from streamrl.streams import RunStreams

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NAME = "fork_savings"


def run_command(*args: str) -> tuple[float, float, str]:
    """Run `streamrl ARGS`; (start and end wall clock in s, stdout). Raises on failure."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "streamrl.cli", *args], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"streamrl {' '.join(args)} failed:\n{out.stdout[-3000:]}"
                           f"\n{out.stderr[-3000:]}")
    return start, time.time(), out.stdout


async def phases(log_url: str, run_id: str, start: float, end: float,
                 reach: int | None = None) -> dict[str, float]:
    """Where a command's time went, from the run's event timestamps: setup (warm start, or the
    fork's rebuild and position) until RunStarted, process start until the first weights load,
    training until the last TrainStep, then the rest (final checkpoint, eval, plots)."""
    async with open_log(log_url) as log:
        events = [decode_event(r.value, "events")
                  for r in await log.read_all(RunStreams(run_id).events)]
    started = next(e.time_ms for e in events if isinstance(e, RunStarted)) / 1000
    loaded = min(e.time_ms for e in events if isinstance(e, WeightVersionLoaded)) / 1000
    steps = {e.version: e.time_ms / 1000 for e in events if isinstance(e, TrainStep)}
    out = {"command_s": end - start, "setup_s": started - start, "spawn_s": loaded - started,
           "train_s": max(steps.values()) - loaded, "after_s": end - max(steps.values())}
    if reach is not None:
        out["train_to_fork_version_s"] = steps[reach] - loaded
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="recipes/arithmetic/recipe_ci.toml")
    p.add_argument("--fork-at", type=int, default=20)
    p.add_argument("--workdir", default=None, help="log and run files (default: a temp dir)")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fork-savings-")).absolute()
    log, runs = str(work / "log"), str(work / "runs")
    stamp = time.strftime("%H%M%S")
    parent, fork = f"fs-full-{stamp}", f"fs-fork-{stamp}"
    print(f"full run {parent} ({args.recipe}) in {work} ...", flush=True)
    full_start, full_end, _ = run_command("run", args.recipe, "--log", log, "--runs-dir", runs,
                                          "--run", parent)
    print(f"fork {fork} at {parent}@{args.fork_at} ...", flush=True)
    fork_start, fork_end, fork_out = run_command(
        "run", args.recipe, "--log", log, "--runs-dir", runs, "--run", fork,
        "--fork", f"{parent}@{args.fork_at}")
    full = json.loads((work / "runs" / parent / "summary.json").read_text())
    forked = json.loads((work / "runs" / fork / "summary.json").read_text())
    carried = re.search(r"(\d+) samples carried over", fork_out)
    result = {
        "info": machine_info(), "recipe": args.recipe, "fork_at": args.fork_at,
        "full": {"rl_s": full["wall_s"], "evals": full["evals"],
                 "batch_reward": full["batch_reward"],
                 **aio.run(phases(log, parent, full_start, full_end, args.fork_at))},
        "fork": {"rl_s": forked["wall_s"], "evals": forked["evals"],
                 "batch_reward": forked["batch_reward"],
                 "carried_samples": int(carried[1]) if carried else None,
                 **aio.run(phases(log, fork, fork_start, fork_end))},
    }
    result["ratio_train"] = result["fork"]["train_s"] / result["full"]["train_s"]
    result["ratio_command"] = result["fork"]["command_s"] / result["full"]["command_s"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    png = plot(result, RESULTS / f"{NAME}.png")
    write_section(result, png)
    print(json.dumps({k: v for k, v in result.items() if k != "info"}, indent=1)[:3000])


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    full, fork, k = result["full"], result["fork"], result["fork_at"]
    ax.plot(range(1, len(full["batch_reward"]) + 1), full["batch_reward"], marker=".",
            label=f"full run ({full['train_s']:.0f} s training)")
    ax.plot(range(k + 1, k + 1 + len(fork["batch_reward"])), fork["batch_reward"], marker=".",
            label=f"fork at {k} ({fork['train_s']:.0f} s training)")
    ax.axvline(k, color="gray", linestyle=":")
    ax.set_xlabel("weight version")
    ax.set_ylabel("mean batch reward")
    ax.set_title(f"{result['recipe']}: full run vs fork at version {k}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_section(result: dict, png: Path) -> None:
    info, full, fork, k = result["info"], result["full"], result["fork"], result["fork_at"]
    fe, ke = full["evals"], fork["evals"]
    lines = [
        f"<!-- {NAME}:start -->", f"## {NAME}", "",
        f"{info['date']} · {info['machine']} · Python {info['python']} · GPU: {info['card']}",
        "", f"`{result['recipe']}` run in full, then forked at version {k} and run to the same "
        "end (`bench/fork_savings.py`; shared CPU cores, so expect noise).", "",
        "| | full run (baseline) | fork at " + str(k) + " | fork / full |", "|---|---|---|---|",
        f"| training (first weights load to last version) | {full['train_s']:.1f} s | "
        f"{fork['train_s']:.1f} s | {result['ratio_train']:.2f}× |",
        f"| whole command | {full['command_s']:.0f} s | {fork['command_s']:.0f} s | "
        f"{result['ratio_command']:.2f}× |",
        f"| setup before RunStarted (warm start / fork rebuild + position) | "
        f"{full['setup_s']:.1f} s | {fork['setup_s']:.1f} s | |",
        f"| process start (RunStarted to first weights load) | {full['spawn_s']:.1f} s | "
        f"{fork['spawn_s']:.1f} s | |",
        f"| after the last version (checkpoint, eval, plots) | {full['after_s']:.1f} s | "
        f"{fork['after_s']:.1f} s | |",
        f"| parent's training time to version {k} | {full['train_to_fork_version_s']:.1f} s "
        "| (saved) | |",
        f"| eval before | {fe.get('eval before', float('nan')):.3f} (v0) | "
        f"{ke.get('eval before', float('nan')):.3f} (v{k}) | |",
        f"| eval after | {fe.get('eval after', float('nan')):.3f} | "
        f"{ke.get('eval after', float('nan')):.3f} | |",
        f"| samples carried over | | {fork['carried_samples']} | |",
        "", f"![{NAME}]({png.relative_to(ROOT)})", f"<!-- {NAME}:end -->"]
    section = "\n".join(lines)
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    pattern = re.compile(rf"<!-- {NAME}:start -->.*?<!-- {NAME}:end -->", re.S)
    text = (pattern.sub(lambda _: section, text) if pattern.search(text)
            else text.rstrip() + "\n\n" + section + "\n")
    path.write_text(text)


if __name__ == "__main__":
    main()
