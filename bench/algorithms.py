"""The learning check of docs/algorithms.md: the same CPU recipe trained with each loss (and a few
advantage / regularizer variants) for the same versions, its held-out accuracy compared with
GRPO + decoupled PPO's, and every run replayed bit-exactly from its log.

    .venv/bin/python -m bench.algorithms                     # recipe_ci.toml, every case
    .venv/bin/python -m bench.algorithms --cases grpo,gspo --max-versions 20
    .venv/bin/python -m bench.algorithms --cases grpo_seed1 --append   # added to the table

Each case is a real `streamrl run` of the recipe with a `[trainer.algorithm]` section appended,
then `streamrl replay RUN` (exit 0: every version's digest reproduced). All runs share one
--workdir, so the SFT warm start is computed once. Not part of CI. Results go to BENCHMARKS.md,
bench/results/algorithms.json and .png (batch reward per version of every case).
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

from bench.common import machine_info, replace_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NAME = "algorithms"

CASES: dict[str, str] = {
    "grpo": "",  # the baseline: GRPO advantages, decoupled PPO (the defaults)
    "ppo_tis": 'loss = "ppo_tis"',
    "gspo": 'loss = "gspo"\nloss_config = { clip_low = 3e-4, clip_high = 4e-4, '
            'aggregation = "seq_mean" }',
    "gspo_token": 'loss = "gspo_token"\nloss_config = { clip_low = 3e-4, clip_high = 4e-4, '
                  'aggregation = "seq_mean" }',
    "cispo": 'loss = "cispo"\nloss_config = { clip_low = 0.99, clip_high = 0.28 }',
    "rloo": 'advantage = "rloo"',
    "reinforce_pp": 'advantage = "reinforce_pp"',
    "grpo_kl_entropy": 'loss_config = { kl_coef = 0.01, entropy_coef = 0.001 }',
    "gspo_token_mean": 'loss = "gspo"',  # default clip range and token_mean aggregation
    "process": 'advantage = "process"',  # outcome reward only: length-weighted GRPO
    "grpo_kl_reward_producer": 'loss_config = { kl_coef = 0.01 }\n'
                               'kl = { reference = "producer", penalty = "reward" }',
    "dr_grpo_kl_reward_producer": 'advantage = "dr_grpo"\nloss_config = { kl_coef = 0.01 }\n'
                                  'kl = { reference = "producer", penalty = "reward" }',
    "grpo_seed1": "",
    "gspo_seed1": 'loss = "gspo"\nloss_config = { clip_low = 3e-4, clip_high = 4e-4, '
                  'aggregation = "seq_mean" }',
}
"""Case name -> the lines of its [trainer.algorithm] section."""

SEEDS = {"grpo_seed1": 1, "gspo_seed1": 1}
"""Cases run with another `[run] seed`: their own warm start, prompts and sampling."""


def streamrl(*args: str) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "streamrl.cli", *args], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    return out.returncode, time.time() - start, out.stdout + out.stderr


def run_case(name: str, recipe: Path, work: Path, max_versions: int | None) -> dict:
    text = recipe.read_text()
    if name in SEEDS:
        text = re.sub(r"(?m)^seed = \d+$", f"seed = {SEEDS[name]}", text, count=1)
    section = CASES[name]
    if section:
        text += f"\n[trainer.algorithm]\n{section}\n"
    path = work / f"{name}.toml"
    path.write_text(text)
    run_id = f"alg-{name.replace('_', '-')}-{time.strftime('%H%M%S')}"
    log, runs = str(work / "log"), str(work / "runs")
    extra = ["--max-versions", str(max_versions)] if max_versions else []
    code, wall, out = streamrl("run", str(path), "--log", log, "--runs-dir", runs,
                               "--run", run_id, *extra)
    if code != 0:
        return {"name": name, "error": out[-2000:]}
    summary = json.loads((work / "runs" / run_id / "summary.json").read_text())
    replay_code, replay_s, replay_out = streamrl("replay", run_id, "--log", log,
                                                 "--runs-dir", runs)
    return {"name": name, "run_id": run_id, "section": section, "wall_s": wall,
            "evals": summary["evals"], "batch_reward": summary["batch_reward"],
            "replay_exact": replay_code == 0, "replay_s": replay_s,
            "replay_tail": replay_out[-400:] if replay_code else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="recipes/arithmetic/recipe_ci.toml")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: "
                   + ", ".join(CASES))
    p.add_argument("--max-versions", type=int, default=None)
    p.add_argument("--workdir", default=None, help="log and run files (default: a temp dir)")
    p.add_argument("--append", action="store_true",
                   help="add the cases to those of the saved JSON")
    p.add_argument("--section-only", action="store_true",
                   help="rewrite the BENCHMARKS.md section and PNG from the saved JSON")
    args = p.parse_args()
    if args.section_only:
        saved = json.loads((RESULTS / f"{NAME}.json").read_text())
        write_section(saved, plot(saved, RESULTS / f"{NAME}.png"))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="algorithms-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"info": machine_info(), "recipe": args.recipe, "cases": []}
    if args.append:
        result["cases"] = json.loads((RESULTS / f"{NAME}.json").read_text())["cases"]
    for name in args.cases.split(","):
        print(f"{name} ...", flush=True)
        case = run_case(name, ROOT / args.recipe, work, args.max_versions)
        result["cases"].append(case)
        print(json.dumps({k: v for k, v in case.items() if k != "batch_reward"})[:600],
              flush=True)
        (RESULTS / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    png = plot(result, RESULTS / f"{NAME}.png")
    write_section(result, png)


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for case in result["cases"]:
        if "batch_reward" in case:
            rewards = case["batch_reward"]
            ax.plot(range(1, len(rewards) + 1), rewards, marker=".", label=case["name"])
    ax.set_xlabel("weight version")
    ax.set_ylabel("mean batch reward")
    ax.set_title(f"{result['recipe']}: one run per algorithm")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_section(result: dict, png: Path) -> None:
    info = result["info"]
    after = {c["name"]: c["evals"].get("eval after") for c in result["cases"] if "evals" in c}

    def baseline(name: str) -> float | None:  # GRPO's run of the same seed
        seed = re.search(r"_seed\d+$", name)
        return after.get("grpo" + (seed[0] if seed else ""))
    lines = [
        f"{info['date']} · {info['machine']} · Python {info['python']} · GPU: {info['card']}",
        "", f"`{result['recipe']}`, one `streamrl run` per case with the `[trainer.algorithm]` "
        "lines shown, then `streamrl replay` of that run (`bench/algorithms.py`; held-out "
        "accuracy by the recipe's evaluator, greedy; `_seed1` cases use `[run] seed = 1`, their "
        "own warm start, and compare with grpo_seed1; one run per row, so a few points are "
        "noise; run times depend on what else shares the 2 cores). Pass: eval after within "
        "0.05 of GRPO's.", "",
        "| case | [trainer.algorithm] | eval before | eval after | vs grpo | replay bit-exact "
        "| run |", "|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        section = "`" + c.get("section", "").replace("\n", "; ") + "`" if c.get("section") else ""
        if "error" in c:
            lines.append(f"| {c['name']} | {section} | failed | | | | |")
            continue
        before, final, base = (c["evals"].get("eval before"), c["evals"].get("eval after"),
                               baseline(c["name"]))
        delta = "" if base is None or final is None else f"{final - base:+.3f}"
        lines.append(f"| {c['name']} | {section} | {before:.3f} | {final:.3f} | {delta} | "
                     f"{'yes' if c['replay_exact'] else 'NO'} ({c['replay_s']:.0f} s) | "
                     f"{c['wall_s']:.0f} s |")
    lines += ["", f"![{NAME}]({png.relative_to(ROOT)})"]
    replace_section(NAME, "\n".join(lines))


if __name__ == "__main__":
    main()
