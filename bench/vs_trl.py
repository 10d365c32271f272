"""The main job against TRL's GRPOTrainer on this CPU machine: same start, reward, steps.

    python -m bench.vs_trl                     # 200 steps each (long on 2 shared cores)
    python -m bench.vs_trl --steps 30          # a shorter check of the same comparison

Both tools start from the gsm8k recipe's warm start (`recipes.gsm8k.prepare`, cached) and train
on its train.parquet with the same reward (streamrl's built-in `math`: TRL's reward function
calls the same `MathReward`), 16 prompts x 8 samples per step / version, lr 3e-4 constant, AdamW
without weight decay, grad clip 1, temperature 1, 24 new tokens, no KL, a token-mean clipped
surrogate (TRL `loss_type="dapo"`, streamrl's default decoupled PPO loss) on group-std-normalized
advantages, the same number of steps. TRL 1.16 runs in its own venv (`scripts/trl-env.sh`) as
one process with torch's default 2 threads; streamrl is `streamrl run` of
`recipes/gsm8k/recipe.toml` without its evaluations (`bench/profile_version.py`): the trainer and
one producer with 1 thread each, file log. They run one after the other, never together.

Reported per tool: the steady time per step (TRL: between `on_step_end` callbacks; streamrl:
between committed versions; medians after the first two), the wall time from launch to exit,
the time from launch to the first generation (TRL: its first `generate` call; streamrl: the
first sample's `started_at`, its prefill), and held-out accuracy of the final weights on the 256
eval questions (`recipes.gsm8k.hooks.evaluate`: greedy, and T=1 over 4 samples), the same
function for both. Other jobs may share the cores: the section records the load average, and
only the ratios within one run compare. Writes the `vs_trl` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, machine_info, replace_section

LR = 3e-4
GROUP = 8
BATCH = 128  # completions per step: 16 prompts x GROUP
MAX_NEW_TOKENS = 24


def trl_worker(args: argparse.Namespace) -> None:
    """Runs inside the TRL venv: GRPOTrainer on the warm start, timings to --result."""
    launched = float(os.environ["VS_TRL_LAUNCHED"])
    import numpy as np
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from streamrl.hooks.rollout import RewardInput
    from streamrl.producers.rewards.math import MathReward

    torch.manual_seed(0)
    data = Path(args.data)
    model = AutoModelForCausalLM.from_pretrained(data / "model", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(data / "model")
    dataset = load_dataset("parquet", data_files=str(data / "train.parquet"), split="train")
    math_reward = MathReward()
    first_generate: list[float] = []
    generate = model.generate

    def timed_generate(*a, **kw):  # type: ignore[no-untyped-def]
        if not first_generate:
            first_generate.append(time.time())
        return generate(*a, **kw)

    model.generate = timed_generate  # type: ignore[method-assign]

    def reward(completions, reward_model, **_):  # type: ignore[no-untyped-def]
        out = []
        for completion, rm in zip(completions, reward_model, strict=True):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            out.append(math_reward(RewardInput(
                prompt_id="trl", prompt_text=None, prompt_tokens=np.zeros(0, np.int32),
                response_text=text, response_tokens=np.zeros(0, np.int32),
                finish_reason="stop", metadata={"ground_truth": rm["ground_truth"]})).reward)
        return out

    step_ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):  # type: ignore[no-untyped-def]
            step_ends.append(time.time())

    config = GRPOConfig(
        output_dir=args.out, max_steps=args.steps, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        num_generations=GROUP, max_completion_length=MAX_NEW_TOKENS, temperature=1.0,
        top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, num_iterations=1, loss_type="dapo",
        scale_rewards="group", use_cpu=True, bf16=False, seed=0, report_to=[],
        logging_steps=max(args.steps, 1), save_strategy="no", disable_dropout=True,
        dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config,
                          train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[Clock()])
    trainer.train()
    trainer.save_model(args.out)
    Path(args.result).write_text(json.dumps({
        "launched": launched, "first_token": first_generate[0] if first_generate else None,
        "step_ends": step_ends, "threads": torch.get_num_threads(),
        "trl": __import__("trl").__version__}))


def run_trl(python: str, data: Path, work: Path, steps: int) -> dict:
    result = work / "trl.json"
    launched = time.time()
    out = subprocess.run(
        [python, "-m", "bench.vs_trl", "--trl-worker", "--data", str(data), "--out",
         str(work / "trl-model"), "--result", str(result), "--steps", str(steps)],
        cwd=ROOT, env={**os.environ, "VS_TRL_LAUNCHED": str(launched),
                       "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True)
    ended = time.time()
    if out.returncode:
        sys.exit(f"TRL failed:\n{out.stderr[-4000:]}")
    figures = json.loads(result.read_text())
    ends = figures["step_ends"]
    steps_s = [b - a for a, b in itertools.pairwise(ends)]
    return {"tool": f"TRL {figures['trl']} GRPOTrainer ({figures['threads']} threads)",
            "steady_ms": 1000 * statistics.median(steps_s[2:] or steps_s),
            "wall_s": ended - launched, "first_token_s": figures["first_token"] - launched,
            "steps": len(ends), "checkpoint": work / "trl-model"}


def run_ours(work: Path, steps: int, max_staleness: int | None = None) -> dict:
    from bench.profile_version import read_timeline, run_streamrl
    from streamrl.checkpoints import checkpoint_dir

    run_id = f"vs-trl-{time.strftime('%H%M%S')}"
    launched, ended, log_dir = run_streamrl(ROOT, work, steps, run_id=run_id,
                                            max_staleness=max_staleness)
    t = asyncio.run(read_timeline(log_dir, run_id, launched))
    intervals = t["version_ms"]
    how = ("the recipe: AdmissionControl, max_staleness 2" if max_staleness is None
           else f"max_staleness {max_staleness}: synchronous" if max_staleness == 0
           else f"max_staleness {max_staleness}")
    return {"tool": f"streamrl `streamrl run` ({how}; trainer + 1 producer, 1 thread each)",
            "steady_ms": statistics.median(intervals[2:] or intervals),
            "wall_s": ended - launched, "first_token_s": t["first_token_s"],
            "steps": len(t["step_ms"]),
            "checkpoint": checkpoint_dir(work / "runs" / run_id, steps)}


def held_out(checkpoint: Path, steps: int) -> dict[str, float]:
    from recipes.gsm8k.hooks import evaluate
    from streamrl.hooks.run import EvalRequest

    return evaluate(EvalRequest(checkpoint_dir=checkpoint, version=steps))


def render(rows: list[dict], steps: int, loads: list[float], warm: dict[str, float]) -> str:
    info = machine_info()
    trl = rows[0]
    lines = [
        f"{info['date']} · {info['machine']} · Python {info['python']} · "
        f"`python -m bench.vs_trl --steps {steps}` · load average (1 min) "
        + " → ".join(f"{x:.1f}" for x in loads)
        + " (other jobs shared the 2 cores: compare the two tools within this run)", "",
        "gsm8k warm start (`recipes.gsm8k.prepare`), its train.parquet, the `math` reward, "
        f"16 prompts x {GROUP} per step, lr {LR:g}, {MAX_NEW_TOKENS} new tokens, no KL; "
        "held-out: the 256 eval questions, greedy and T=1 (4 samples). Warm start: greedy "
        f"{warm['eval greedy accuracy']:.3f}, T=1 {warm['eval accuracy T=1']:.3f}.", "",
        "| tool | steps | steady s/step | wall s (launch to exit) | launch to first "
        "generation s | held-out greedy | held-out T=1 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['tool']} | {r['steps']} | {r['steady_ms'] / 1000:.3f} | {r['wall_s']:.1f} | "
            f"{r['first_token_s']:.1f} | {r['eval']['eval greedy accuracy']:.3f} | "
            f"{r['eval']['eval accuracy T=1']:.3f} |")
    lines.append("")
    for ours in rows[1:]:
        lines.append(f"{ours['tool'].split(';')[0]}) / TRL: steady time per step "
                     f"{ours['steady_ms'] / trl['steady_ms']:.2f}x, wall "
                     f"{ours['wall_s'] / trl['wall_s']:.2f}x, launch to first generation "
                     f"{ours['first_token_s'] / trl['first_token_s']:.2f}x.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    p.add_argument("--sync", action="store_true",
                   help="also streamrl with max_staleness 0 (on-policy, as TRL trains)")
    p.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trl_worker:
        trl_worker(args)
        return
    from recipes.gsm8k.prepare import prepare

    data = prepare(ROOT / "runs" / "gsm8k")
    python = subprocess.run([str(ROOT / "scripts" / "trl-env.sh")], check=True,
                            capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="vs-trl-") as tmp:
        work = Path(tmp)
        loads = [os.getloadavg()[0]]
        rows = [run_trl(python, data, work, args.steps)]
        loads.append(os.getloadavg()[0])
        (work / "ours").mkdir()
        rows.append(run_ours(work / "ours", args.steps))
        loads.append(os.getloadavg()[0])
        if args.sync:
            (work / "sync").mkdir()
            rows.append(run_ours(work / "sync", args.steps, max_staleness=0))
            loads.append(os.getloadavg()[0])
        for row in rows:
            row["eval"] = held_out(row.pop("checkpoint"), args.steps)
            print(row, flush=True)
        warm = held_out(data / "model", 0)
    text = render(rows, args.steps, loads, warm)
    print(text)
    if not args.no_write:
        replace_section("vs_trl", text)


if __name__ == "__main__":
    main()
