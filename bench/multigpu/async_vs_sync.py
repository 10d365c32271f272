"""Asynchronous vs synchronous RL: the same recipe, the same GPUs, the same number of trained
samples, once with the synchronous policy (staleness 0: producers generate only the current
version's batch, then wait) and once with an asynchronous one (AReaL-style admission control).

    python -m bench.multigpu.async_vs_sync --out /tmp/avs                 # the GPU recipe
    python -m bench.multigpu.async_vs_sync --recipe R.toml --producers 7  # e.g. 1+7 GPUs
    python -m bench.multigpu.async_vs_sync --record /tmp/avs/async_vs_sync.json
    python -m bench.multigpu.async_vs_sync --smoke --out /tmp/avs         # CPU: tests/run/tiny.toml

Both runs train `run.max_versions` versions of `trainer.batch_size` samples, so they train the
same number of samples. Figures, all read back from each run's log (bench/gpu_run.py `analyze`):
RL wall time (summary.json), the batch reward per version, and the staleness of every trained
sample (BatchFormed.policy_version minus the sampling version). Speedup = sync wall / async
wall; it counts only "at equal final reward": the mean batch reward of the last fifth of the
versions of the async run must be within `--reward-tol` of the sync run's, and the result says
whether it was. Goal: >= 2.77x (AReaL's published figure, on its own models and GPUs).

The smoke mode runs the tiny CPU recipe for 2 versions: it shows the code runs; its speedup is
not the goal (on 2 shared CPU cores nothing overlaps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, machine_info

SYNC = 'policy = "streamrl.staleness:Synchronous"\n'
ASYNC = 'policy = "streamrl.staleness:AdmissionControl"\noptions = {{ max_staleness = {n} }}\n'
_SECTION = re.compile(r"^\[staleness\]\n(?:(?!^\[).*\n?)*", re.M)


def with_staleness(recipe_text: str, section_body: str) -> str:
    """The recipe with its [staleness] section replaced (or added)."""
    section = "[staleness]\n" + section_body + "\n"
    if _SECTION.search(recipe_text):
        return _SECTION.sub(lambda _: section, recipe_text, count=1)
    return recipe_text.rstrip() + "\n\n" + section


def one_run(recipe: Path, mode: str, body: str, out: Path, *, max_versions: int | None,
            producers: int | None) -> dict:
    from bench.gpu_run import analyze

    run_id = f"avs-{mode}-{time.strftime('%H%M%S')}"
    path = out / f"{mode}.toml"
    path.write_text(with_staleness(recipe.read_text(), body))
    log_dir, runs_dir = out / "log", out / "runs"
    cmd = [sys.executable, "-m", "streamrl.cli", "run", str(path), "--run", run_id,
           "--log", str(log_dir), "--runs-dir", str(runs_dir)]
    if max_versions:
        cmd += ["--max-versions", str(max_versions)]
    if producers:
        cmd += ["--producers", str(producers)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    result = asyncio.run(analyze(str(log_dir), run_id))
    summary = json.loads((runs_dir / run_id / "summary.json").read_text())
    rewards = [r for _, r in result["reward"] if r is not None]
    tail = rewards[-max(1, len(rewards) // 5):]
    return result | {"run_id": run_id, "mode": mode, "wall_s": summary["wall_s"],
                     "final_reward": sum(tail) / len(tail) if tail else float("nan")}


def run(out: Path, recipe: Path, *, max_staleness: int, max_versions: int | None,
        producers: int | None, reward_tol: float, smoke: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    runs = {mode: one_run(recipe, mode, body, out, max_versions=max_versions,
                          producers=producers)
            for mode, body in (("sync", SYNC), ("async", ASYNC.format(n=max_staleness)))}
    sync, asyn = runs["sync"], runs["async"]
    card = "none (CPU)"
    try:
        import torch

        if torch.cuda.is_available():
            card = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    rel = recipe.resolve().relative_to(ROOT) if recipe.resolve().is_relative_to(ROOT) else recipe
    result = {"recipe": str(rel), "smoke": smoke, "max_staleness": max_staleness,
              "speedup": sync["wall_s"] / asyn["wall_s"],
              "equal_reward": abs(asyn["final_reward"] - sync["final_reward"]) <= reward_tol,
              "reward_tol": reward_tol, "runs": runs, **machine_info(), "card": card}
    (out / "async_vs_sync.json").write_text(json.dumps(result, indent=2))
    return result


def record(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.trainer_mfu import _write_section

    d = json.loads(path.read_text())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, r in d["runs"].items():
        v, rw = zip(*[(a, b) for a, b in r["reward"] if b is not None], strict=True)
        axes[0].plot(v, rw, label=f"{mode} ({r['wall_s']:.0f} s)")
        lags = {int(k): n for k, n in r["staleness"].items()}
        axes[1].bar([k + (0.2 if mode == "async" else -0.2) for k in lags], list(lags.values()),
                    width=0.4, label=mode)
    axes[0].set(xlabel="version", ylabel="batch reward", title="reward")
    axes[1].set(xlabel="versions behind", ylabel="samples", title="staleness at training")
    for ax in axes:
        ax.legend()
    if d["smoke"]:
        fig.suptitle("CPU smoke run: not the goal")
    fig.tight_layout()
    png = ROOT / "bench" / "results" / "async_vs_sync.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    s, a = d["runs"]["sync"], d["runs"]["async"]

    def counts(r: dict) -> str:
        return f"{r['num_samples']} / {r['num_versions']}"

    note = " CPU smoke run: these figures only show the code runs, not the goal." if d[
        "smoke"] else ""
    section = f"""<!-- async_vs_sync:start -->
## Async vs sync (same recipe, same GPUs, same trained samples)

`python -m bench.multigpu.async_vs_sync` — {d['date']}, {d['card']}, {d['machine']},
`{d['recipe']}`, async = AdmissionControl(max_staleness={d['max_staleness']}).{note}

| | sync (staleness 0) | async |
|---|---|---|
| RL wall time | {s['wall_s']:.1f} s | {a['wall_s']:.1f} s |
| generated samples / versions trained | {counts(s)} | {counts(a)} |
| final batch reward (last fifth) | {s['final_reward']:.3f} | {a['final_reward']:.3f} |
| trained samples by staleness (versions behind: samples) | {s['staleness']} | {a['staleness']} |

Speedup {d['speedup']:.2f}x (goal >= 2.77x); final rewards within {d['reward_tol']}:
{'yes' if d['equal_reward'] else 'NO (the speedup does not count)'}.
![async_vs_sync](bench/results/async_vs_sync.png)
<!-- async_vs_sync:end -->"""
    _write_section("async_vs_sync", section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/async_vs_sync"))
    p.add_argument("--record", type=Path, help="write BENCHMARKS.md + PNG from a results JSON")
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes/arithmetic/recipe_gpu.toml")
    p.add_argument("--max-staleness", type=int, default=2)
    p.add_argument("--max-versions", type=int)
    p.add_argument("--producers", type=int)
    p.add_argument("--reward-tol", type=float, default=0.05)
    p.add_argument("--smoke", action="store_true", help="tests/run/tiny.toml on CPU, 2 versions")
    args = p.parse_args()
    if args.record:
        record(args.record)
        return
    recipe = ROOT / "tests/run/tiny.toml" if args.smoke else args.recipe
    versions = 2 if args.smoke else args.max_versions
    print(json.dumps(run(args.out, recipe, max_staleness=args.max_staleness,
                         max_versions=versions, producers=args.producers,
                         reward_tol=args.reward_tol, smoke=args.smoke), indent=2, default=str))


if __name__ == "__main__":
    main()
