"""The end-to-end GPU run: the arithmetic recipe with engine and trainer colocated on one GPU,
then its figures read back from the log.

    python -m bench.gpu_run --out /tmp/gpu_run        # runs recipes/arithmetic/recipe_gpu.toml
    python -m bench.gpu_run --recipe recipes/arithmetic/recipe_gpu_megatron.toml   # MoE, megatron
    python -m bench.gpu_run --record /tmp/gpu_run/gpu_run.json   # BENCHMARKS.md + PNG

From the log alone (nothing is timed outside the run): generation tok/s (response tokens over
the span from the first sample started to the last finished, from the trajectory rows),
training tok/s (each TrainStep's `train_tokens` / `step_ms`), weight-sync ms per version (the
producers' WeightVersionLoaded.load_ms: transport load + digest check + copy into the engine),
the per-sample staleness at training time (BatchFormed.policy_version minus the version that
sampled the row), and the batch reward per version plus the held-out eval before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, ROOT, machine_info
from bench.trainer_mfu import _write_section
from streamrl.log import open_log
from streamrl.schemas import batch_to_samples, decode_event, decode_trajectories
from streamrl.streams import RunStreams

RECIPE = "recipes/arithmetic/recipe_gpu.toml"


async def analyze(log_url: str, run_id: str) -> dict:
    streams = RunStreams(run_id)
    async with open_log(log_url, writer_id=f"{run_id}-bench") as log:
        events = [decode_event(r.value, "events") for r in await log.read_all(streams.events)]
        rows = await log.read_all(streams.trajectories)
    samples = [s for r in rows for s in batch_to_samples(decode_trajectories(r.value))]
    by_id = {s.sample_id: s for s in samples}
    steps = [e for e in events if type(e).__name__ == "TrainStep"]
    loads = [e for e in events if type(e).__name__ == "WeightVersionLoaded"]
    batches = [e for e in events if type(e).__name__ == "BatchFormed"]
    lags = [b.policy_version - by_id[sid].policy_version for b in batches
            for sid in b.sample_ids if sid in by_id]
    span = (max(s.finished_at for s in samples) - min(s.started_at for s in samples))
    gen_tokens = sum(len(s.response_tokens) for s in samples)
    train_tok_s = [s.metrics["train_tokens"] / s.metrics["step_ms"] * 1e3 for s in steps
                   if s.metrics.get("step_ms")]
    return {
        "num_versions": len(steps), "num_samples": len(samples),
        "generation_tok_s": gen_tokens / span.total_seconds(),
        "generated_tokens": gen_tokens,
        "train_tok_s_median": float(np.median(train_tok_s)) if train_tok_s else None,
        "step_ms_median": float(np.median([s.metrics.get("step_ms", np.nan) for s in steps])),
        "load_ms": [[e.version, e.load_ms] for e in loads],
        "staleness": dict(sorted(collections.Counter(lags).items())),
        "reward": [[s.version, s.metrics.get("reward_mean")] for s in steps],
    }


def section_name(recipe: str) -> str:
    """`gpu_run` for the default recipe, `gpu_run_<name>` for recipe_gpu_<name>.toml."""
    stem = Path(recipe).stem.removeprefix("recipe_").removeprefix("gpu_")
    return "gpu_run" if recipe == RECIPE else f"gpu_run_{stem}"


def run(out: Path, max_versions: int | None, recipe: str = RECIPE) -> Path:
    import torch

    from streamrl.recipe.config import load_config

    out.mkdir(parents=True, exist_ok=True)
    run_id = f"arithmetic-gpu-{time.strftime('%H%M%S')}"
    log_dir, runs_dir = out / "log", out / "runs"
    cmd = [sys.executable, "-m", "streamrl.cli", "run", recipe, "--run", run_id,
           "--log", str(log_dir), "--runs-dir", str(runs_dir)]
    if max_versions:
        cmd += ["--max-versions", str(max_versions)]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.monotonic() - t0
    result = asyncio.run(analyze(str(log_dir), run_id))
    summary = json.loads((runs_dir / run_id / "summary.json").read_text())
    info = machine_info() | {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    config = load_config(ROOT / recipe)
    result |= {"info": info, "run_id": run_id, "wall_s": wall, "rl_wall_s": summary["wall_s"],
               "evals": summary["evals"], "recipe": recipe,
               "backend": config.trainer.backend, "moe": config.model.moe,
               "transport": config.weights.transport}
    path = out / f"{section_name(recipe)}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def record(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = json.loads(path.read_text())
    recipe = d.get("recipe", RECIPE)
    name = section_name(recipe)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(d, indent=2) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    v, r = zip(*[(a, b) for a, b in d["reward"] if b is not None], strict=True)
    axes[0].plot(v, r)
    axes[0].set(xlabel="version", ylabel="batch reward", title="reward")
    lv, lm = zip(*d["load_ms"], strict=True) if d["load_ms"] else ((), ())
    axes[1].plot(lv, lm, ".")
    axes[1].set(xlabel="version", ylabel="ms", title="weight sync per version (engine side)")
    lags = {int(k): n for k, n in d["staleness"].items()}
    axes[2].bar(list(lags), list(lags.values()))
    axes[2].set(xlabel="versions behind", ylabel="samples", title="staleness at training")
    fig.tight_layout()
    png = RESULTS / f"{name}.png"
    fig.savefig(png, dpi=110)
    loads = [m for _, m in d["load_ms"]]
    info, ev = d["info"], d["evals"]
    total = sum(lags.values())
    dist = ", ".join(f"{k}: {100 * n / total:.1f}%" for k, n in sorted(lags.items()))
    model = "MoE, routing recorded and replayed" if d.get("moe") else "dense"
    lines = [f"<!-- {name}:start -->", f"## {name}", "",
             f"{info['date']} · {info['card']} · torch {info['torch']} · `{recipe}` "
             f"({d['num_versions']} versions, {model}; engine bf16 + "
             f"{d.get('backend', 'torch')} trainer bf16/fp32-master on one GPU, "
             f"{d.get('transport', 'cuda_ipc')} weights)", "",
             "| figure | value |", "|---|---|",
             f"| held-out greedy accuracy before → after | "
             f"{ev.get('eval before', float('nan')):.2f} → "
             f"{ev.get('eval after', float('nan')):.2f} |",
             f"| batch reward first 10 → last 10 versions | {np.mean(r[:10]):.2f} → "
             f"{np.mean(r[-10:]):.2f} |",
             f"| generation tok/s (response tokens / sampling span) | "
             f"{d['generation_tok_s']:,.0f} |",
             f"| training tok/s (median step) | {d['train_tok_s_median']:,.0f} "
             f"({d['step_ms_median']:.0f} ms/step) |",
             f"| weight sync ms per version (median / max, engine side incl. digest) | "
             f"{np.median(loads) if loads else float('nan'):.0f} / "
             f"{max(loads) if loads else float('nan')} |",
             f"| staleness at training (share of samples) | {dist} |",
             f"| RL wall time | {d['rl_wall_s']:.0f} s |", "",
             f"![{name}]({png.relative_to(ROOT)})", f"<!-- {name}:end -->"]
    _write_section(name, "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/gpu_run"))
    p.add_argument("--record", type=Path)
    p.add_argument("--max-versions", type=int)
    p.add_argument("--recipe", default=RECIPE, help="a GPU recipe (repo-relative path)")
    args = p.parse_args()
    if args.record:
        record(args.record)
        return
    print(run(args.out, args.max_versions, args.recipe))


if __name__ == "__main__":
    main()
