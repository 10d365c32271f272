"""FP8 training throughput on one GPU (issue 20): the trainer's GRPO step with
`[trainer.compute] precision = "fp8"` (torchao float8 linears) against bf16, same everything
else, at the Qwen3-1.7B shape and the Qwen3-8B layer shape.

    python -m bench.fp8_training --out /tmp/fp8t                 # on an H100 with torchao
    python -m bench.fp8_training --record /tmp/fp8t/fp8_training.json   # BENCHMARKS.md
    python -m bench.fp8_training --quick --out /tmp/fp8t         # a small shape, CPU allowed

One step is `Learner.step` on 64 samples x 1024 tokens (256 prompt + 768 response), one
optimizer step over 8-row micro-batches, each decoder layer compiled (torchao's float8 casts
fuse only when compiled). Model FLOPs as `bench/trainer_mfu.py` counts them. The 8B shape is
its first 8 of 36 layers (hidden 4096, MLP 12288, 32/8 heads, full vocabulary): the whole 8B
model's fp32 master weights and AdamW state (~130 GB) do not fit one H100, and every layer is
the same GEMMs, so the per-layer speedup is the 8B figure. Goal (issue 20): FP8 >= 1.3x bf16
step throughput at 8B.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, machine_info, replace_section
from bench.trainer_mfu import PEAK_TFLOPS, samples, step_flops
from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.models import CausalLM, ModelConfig
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig

QWEN3 = dict(model_type="qwen3", vocab_size=151_936, head_dim=128, rope_theta=1_000_000.0,
             max_position_embeddings=4096)
SHAPES = {
    "1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
    "8B (8 of 36 layers)": dict(hidden_size=4096, intermediate_size=12288,
                                num_hidden_layers=8, num_attention_heads=32,
                                num_key_value_heads=8, tie_word_embeddings=False),
}
QUICK = {"quick": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       vocab_size=512, tie_word_embeddings=True)}
OPTIONS = {"compile": True, "micro_batch_rows": 8}


def measure(shape: dict, precision: str, quick: bool, num_steps: int) -> dict:
    torch.manual_seed(0)
    torch._dynamo.reset()
    cuda = torch.cuda.is_available()
    config = ModelConfig(**(QWEN3 | shape))
    compute = (ComputeConfig(device="cuda", precision=precision, **OPTIONS) if cuda
               else ComputeConfig())
    learner = Learner(CausalLM(config), LearnerSetup(
        trainer=TrainerSection(lr=1e-6, batch_size=64, algorithm=AlgorithmConfig(),
                               compute=compute),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo))
    num_seqs, prompt, response = (8, 8, 24) if quick else (64, 256, 768)
    rows = samples(num_seqs, prompt, response, config.vocab_size)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(num_steps + 2):  # two warm-up steps (compilation, allocator)
        _sync()
        t0 = time.perf_counter()
        metrics = learner.step(rows, [1.0] * num_seqs, version=i)  # type: ignore[arg-type]
        _sync()
        times.append(time.perf_counter() - t0)
        losses.append(metrics["loss"])
    step_s = float(np.median(times[2:]))
    flops = step_flops(config, num_seqs, prompt + response)
    return {"precision": precision, "step_s": step_s, "steps_s": times[2:],
            "tokens_per_s": num_seqs * (prompt + response) / step_s,
            "tflops": flops / step_s / 1e12, "losses": losses,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(out: Path, quick: bool, num_steps: int, only: list[str] | None = None) -> Path:
    cuda = torch.cuda.is_available()
    info = machine_info() | {"torch": torch.__version__,
                             "card": torch.cuda.get_device_name() if cuda else "none (CPU)"}
    precisions = ["bf16", "fp8"] if cuda else ["fp32"]
    result: dict = {"info": info, "options": OPTIONS, "cases": []}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fp8_training.json"
    if path.exists() and only:  # a second call for the other shape adds to the first's
        result["cases"] = [c for c in json.loads(path.read_text())["cases"]
                           if c["shape"] not in only]
    for name, shape in (QUICK if quick else SHAPES).items():
        if only and name not in only:
            continue
        for precision in precisions:
            try:
                case = measure(shape, precision, quick, num_steps)
            except Exception as e:  # an OOM or a refusal: keep the other cases
                case = {"precision": precision, "error": f"{type(e).__name__}: {e}"[:300]}
            case["shape"] = name
            print(json.dumps(case), flush=True)
            result["cases"].append(case)
            path.write_text(json.dumps(result, indent=2) + "\n")
            if cuda:
                torch.cuda.empty_cache()
    return path


def record(path: Path) -> None:
    data = json.loads(path.read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fp8_training.json").write_text(json.dumps(data, indent=2) + "\n")
    info = data["info"]
    lines = [f"{info['date']} · {info['card']} · torch {info['torch']} · 64 x 1024 tokens per "
             f"step, options {data['options']} (`bench/fp8_training.py`)", "",
             "| shape | precision | step | tokens/s | model TFLOP/s | MFU (989 bf16) | vs bf16 "
             "| peak mem | loss (first → last) |", "|---|---|---|---|---|---|---|---|---|"]
    bf16 = {c["shape"]: c for c in data["cases"] if c["precision"] == "bf16" and "step_s" in c}
    goal = None
    for c in data["cases"]:
        if "error" in c:
            lines.append(f"| {c['shape']} | {c['precision']} | {c['error'][:80]} | | | | | | |")
            continue
        base = bf16.get(c["shape"])
        speedup = base["step_s"] / c["step_s"] if base else None
        if c["precision"] == "fp8" and c["shape"].startswith("8B") and speedup is not None:
            goal = speedup
        lines.append(f"| {c['shape']} | {c['precision']} | {c['step_s'] * 1e3:,.0f} ms | "
                     f"{c['tokens_per_s']:,.0f} | {c['tflops']:.0f} | "
                     f"{100 * c['tflops'] / PEAK_TFLOPS:.1f}% | "
                     f"{'' if speedup is None else f'{speedup:.2f}x'} | "
                     f"{c['peak_mem_gib']:.1f} GiB | {c['losses'][0]:.4f} → "
                     f"{c['losses'][-1]:.4f} |")
    if goal is not None:
        lines += ["", f"Goal FP8 ≥ 1.3x bf16 step throughput at the 8B shape: "
                      f"{'met' if goal >= 1.3 else '**missed**'} ({goal:.2f}x)."]
    replace_section("fp8_training", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--record", type=Path, help="only write BENCHMARKS.md from this JSON")
    p.add_argument("--quick", action="store_true", help="a tiny shape (CPU allowed)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="default: every shape")
    args = p.parse_args()
    if args.record:
        return record(args.record)
    if torch.cuda.is_available() and importlib.util.find_spec("torchao") is None:
        raise SystemExit("fp8_training needs torchao: pip install --no-deps .whl/torchao-*.whl")
    print(f"wrote {run(args.out, args.quick, args.steps, args.shapes)}")
    return None


if __name__ == "__main__":
    main()
