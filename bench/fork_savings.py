"""What a fork saves: a recipe run in full (the baseline, versions 0 -> N) against a fork of that
same run at version K run to N, measured on the same machine in the same invocation.

    .venv/bin/python -m bench.fork_savings                         # recipe_ci.toml, fork at 20
    .venv/bin/python -m bench.fork_savings --recipe recipes/arithmetic/recipe.toml --fork-at 100

Both runs are real `streamrl run` processes on the embedded file log. Reported: wall time of each
command (setup, warm start, RL, evals), its RL part (`summary.json` wall_s), the held-out eval
before and after, and the time the parent needed to reach version K. The ratio is the fork's
RL wall time over the full run's. Results go to BENCHMARKS.md, bench/results/fork_savings.json
and .png (batch reward per version of both runs).
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
from schemas import RunStarted, TrainStep, decode_event
from streamrl import aio
from streamrl.log import open_log
from streamrl.streams import RunStreams

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NAME = "fork_savings"


def run_command(*args: str) -> tuple[float, str]:
    """Run `streamrl ARGS`; (wall seconds, stdout). Raises with the output on failure."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "streamrl.cli", *args], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"streamrl {' '.join(args)} failed:\n{out.stdout[-3000:]}"
                           f"\n{out.stderr[-3000:]}")
    return wall, out.stdout


async def reach_time(log_url: str, run_id: str, version: int) -> float:
    """Seconds from the run's RunStarted to the TrainStep of `version`."""
    async with open_log(log_url) as log:
        events = [decode_event(r.value, "events")
                  for r in await log.read_all(RunStreams(run_id).events)]
    started = next(e.time_ms for e in events if isinstance(e, RunStarted))
    step = next(e.time_ms for e in events if isinstance(e, TrainStep) and e.version == version)
    return (step - started) / 1000


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
    full_wall, _ = run_command("run", args.recipe, "--log", log, "--runs-dir", runs,
                               "--run", parent)
    print(f"fork {fork} at {parent}@{args.fork_at} ...", flush=True)
    fork_wall, fork_out = run_command("run", args.recipe, "--log", log, "--runs-dir", runs,
                                      "--run", fork, "--fork", f"{parent}@{args.fork_at}")
    full = json.loads((work / "runs" / parent / "summary.json").read_text())
    forked = json.loads((work / "runs" / fork / "summary.json").read_text())
    carried = re.search(r"(\d+) samples carried over", fork_out)
    result = {
        "info": machine_info(), "recipe": args.recipe, "fork_at": args.fork_at,
        "full": {"command_s": full_wall, "rl_s": full["wall_s"], "evals": full["evals"],
                 "batch_reward": full["batch_reward"],
                 "reach_fork_version_s": aio.run(reach_time(log, parent, args.fork_at))},
        "fork": {"command_s": fork_wall, "rl_s": forked["wall_s"], "evals": forked["evals"],
                 "batch_reward": forked["batch_reward"],
                 "carried_samples": int(carried[1]) if carried else None},
    }
    result["ratio_rl"] = forked["wall_s"] / full["wall_s"]
    result["ratio_command"] = fork_wall / full_wall
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
            label=f"full run ({full['rl_s']:.0f} s of RL)")
    ax.plot(range(k + 1, k + 1 + len(fork["batch_reward"])), fork["batch_reward"], marker=".",
            label=f"fork at {k} ({fork['rl_s']:.0f} s of RL)")
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
        f"| RL wall time | {full['rl_s']:.0f} s | {fork['rl_s']:.0f} s | "
        f"{result['ratio_rl']:.2f}× |",
        f"| whole command (setup, warm start, evals) | {full['command_s']:.0f} s | "
        f"{fork['command_s']:.0f} s | {result['ratio_command']:.2f}× |",
        f"| parent's time to reach version {k} | {full['reach_fork_version_s']:.0f} s | | |",
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
