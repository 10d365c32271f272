"""What a KL penalty to the reference policy costs the trainer on one GPU: `Learner.step` at the
Qwen3-0.6B shape (bf16 autocast, fp32 master weights, eager), 64 samples x 1024 tokens, without
and with `loss_config.kl_coef` (the frozen initial weights' extra no-grad forward per step).

    python3 -m bench.reference_cost --out /tmp/ref        # on the GPU: measures, writes JSON
    python3 -m bench.reference_cost --quick --out /tmp/ref   # a tiny shape, CPU allowed

Reported: median step time, the reference's share of it, peak GPU memory, and kl_ref of the
first step with one minibatch (0 exactly when the reference is computed as the policy is).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info
from bench.trainer_mfu import model_config, samples
from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.models import CausalLM
from streamrl.models.checkpoint import save_checkpoint
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig, LossConfig


def measure(init: Path, kl_coef: float, minibatches: int, quick: bool, device: torch.device,
            num_steps: int) -> dict:
    torch.manual_seed(0)
    cfg = model_config("0.6B", quick)
    num_seqs, prompt, response = (8, 8, 24) if quick else (64, 256, 768)
    compute = (ComputeConfig(device=str(device), precision="bf16") if device.type == "cuda"
               else ComputeConfig())
    algorithm = AlgorithmConfig(loss_config=LossConfig(kl_coef=kl_coef))
    learner = Learner.from_checkpoint(init, LearnerSetup(
        trainer=TrainerSection(lr=1e-6, minibatches=minibatches, algorithm=algorithm,
                               compute=compute),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo, reference=init))
    rows = samples(num_seqs, prompt, response, cfg.vocab_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, metrics = [], []
    for i in range(num_steps + 1):  # one warm-up step (allocator, reference load)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        metrics.append(learner.step(rows, [1.0] * num_seqs, version=i + 1))  # type: ignore[arg-type]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"kl_coef": kl_coef, "minibatches": minibatches, "first_step_s": times[0],
            "step_s": float(np.median(times[1:])), "steps_s": times[1:],
            "kl_ref_first": metrics[0].get("kl_ref"), "kl_ref_last": metrics[-1].get("kl_ref"),
            "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                             if device.type == "cuda" else 0.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init"
        torch.manual_seed(0)
        save_checkpoint(CausalLM(model_config("0.6B", args.quick)), init)
        cases = [measure(init, 0.0, 4, args.quick, device, args.steps),
                 measure(init, 0.01, 4, args.quick, device, args.steps),
                 measure(init, 0.01, 1, args.quick, device, 0)]
    result = {"info": {**machine_info(), "card": (torch.cuda.get_device_name(device)
                                                   if device.type == "cuda" else "none (CPU)")},
              "quick": args.quick, "cases": cases,
              "reference_share": 1 - cases[0]["step_s"] / cases[1]["step_s"]}
    (out / "reference_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
