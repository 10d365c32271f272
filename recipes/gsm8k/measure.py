"""Measure the gsm8k recipe on this machine and write the `gsm8k` section of BENCHMARKS.md.

    python -m recipes.gsm8k.measure            # prepare (cached), one `streamrl run`, evaluations

Held-out accuracy of the warm start and of each kept checkpoint (greedy and at temperature 1,
4 samples per question), the wall time of the warm start (as prepared.json recorded it) and of
RL (the run's summary.json), the machine and its load average (wall times on a shared machine
move with it; step counts do not).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, machine_info, replace_section
from recipes.gsm8k.prepare import prepare

RECIPE = ROOT / "recipes" / "gsm8k" / "recipe.toml"


def evaluate_dir(directory: Path, version: int) -> dict[str, float]:
    from recipes.gsm8k.hooks import evaluate
    from streamrl.hooks.run import EvalRequest

    return evaluate(EvalRequest(checkpoint_dir=directory, version=version))


def _periodic_row(evals: list[dict]) -> list[str]:
    """`[eval] every_versions` during the run: first and last mean@4 / pass@4, time taken."""
    if not evals:
        return []
    first, last = evals[0], evals[-1]
    return [f"| periodic evaluations ({len(evals)}, first {first.get('num_prompts')} eval "
            f"rows): mean@4 / pass@4 at "
            f"v{first['version']} → v{last['version']}, time in all | {first['mean@4']:.3f} / "
            f"{first['pass@4']:.3f} → {last['mean@4']:.3f} / {last['pass@4']:.3f}, "
            f"{sum(e['duration_ms'] for e in evals) / 1000:.0f} s |"]


def main() -> None:
    import torch

    torch.set_num_threads(1)
    data = prepare(ROOT / "runs" / "gsm8k")
    prepared = json.loads((data / "prepared.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="gsm8k-measure-"))
    run_id = f"gsm8k-measure-{time.strftime('%H%M%S')}"
    load_before = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, "-m", "streamrl.cli", "run", str(RECIPE), "--run", run_id, "--log",
         str(work / "log"), "--runs-dir", str(work / "runs")],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"streamrl run failed:\n{out.stderr[-3000:]}\n{out.stdout[-3000:]}")
    load_after = os.getloadavg()[0]
    summary = json.loads((work / "runs" / run_id / "summary.json").read_text())
    rows = [(0, evaluate_dir(data / "model", 0))]
    for ckpt in sorted((work / "runs" / run_id / "checkpoints").glob("v*")):
        rows.append((int(ckpt.name[1:]), evaluate_dir(ckpt, int(ckpt.name[1:]))))
    info = machine_info()
    rewards = [r for r in summary["batch_reward"] if r is not None]
    k = max(1, len(rewards) // 5)
    lines = [
        f"{info['date']} · {info['machine']} · Python {info['python']} · load average "
        f"{load_before:.1f} → {load_after:.1f} (1 min; other jobs shared the 2 cores)", "",
        f"`recipes/gsm8k/recipe.toml`: a {prepared['hidden_size']}-wide, "
        f"{prepared['num_layers']}-layer Qwen3 warm-started by `python -m recipes.gsm8k.prepare` "
        f"({prepared['steps']} SFT steps), then GRPO with the `math` reward, 16 prompts x 8 "
        "samples per version, one producer and the trainer with 1 torch thread each, file log "
        "(`python -m recipes.gsm8k.measure`). Held-out: the 256 questions of eval.parquet.", "",
        "| what | value |", "|---|---|",
        f"| warm start wall (SFT, when prepared; cached after) | "
        f"{prepared['warm_start_s']:.0f} s |",
        f"| RL wall ({len(rewards)} versions, `streamrl run` with its periodic evaluations, "
        f"without the before/after ones) | {summary['wall_s']:.0f} s |",
        *_periodic_row(summary.get("periodic_evals", [])),
        f"| batch reward, first / last {k} versions | {sum(rewards[:k]) / k:.3f} / "
        f"{sum(rewards[-k:]) / k:.3f} |", "",
        "| version | held-out greedy accuracy | held-out accuracy, T=1 (4 samples) |",
        "|---|---|---|"]
    lines += [f"| {v} | {m['eval greedy accuracy']:.3f} | {m['eval accuracy T=1']:.3f} |"
              for v, m in rows]
    if "eval after" in summary["evals"] and rows[-1][0] != len(rewards):
        lines.append(f"| {len(rewards)} (final) | {summary['evals']['eval after']:.3f} | |")
    replace_section("gsm8k", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
