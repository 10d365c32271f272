"""MFU of the trainer's GRPO step on one GPU, at the Qwen3-0.6B and -1.7B shapes.

    python -m bench.trainer_mfu --out /tmp/mfu                # on the GPU: measures, writes JSON
    python -m bench.trainer_mfu --record /tmp/mfu/trainer_mfu.json   # BENCHMARKS.md + PNG
    python -m bench.trainer_mfu --quick --out /tmp/mfu        # a tiny shape, CPU allowed

One step is `Learner.step` on a real batch of 64 samples x 1024 tokens (256 prompt + 768
response): batch assembly, GRPO advantages, the proximal logprobs (a no-grad forward), then
forward + backward of the decoupled PPO loss and fused AdamW, per minibatch. Model FLOPs per
step count that work: 2·N·T for the proximal forward plus 6·N·T for training (N = the matmul
parameters, the tied LM head once, the embedding lookup not at all), plus causal attention
(2·L·S²·heads·head_dim per sequence forward, x4 for prox + fwd + 2x bwd). Recomputation
(activation checkpointing, the logits in backward) is not counted: this is MFU, not HFU. MFU is
given against the H100 SXM dense bf16 peak (989 TFLOP/s) and against a bf16 8192³ matmul
measured in the same run (the baseline).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, ROOT, machine_info
from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.models import CausalLM, ModelConfig
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig
from streamrl.schemas import Sample

PEAK_TFLOPS = 989.0  # H100 SXM bf16 dense
SHAPES = {
    "0.6B": dict(hidden_size=1024, intermediate_size=3072),
    "1.7B": dict(hidden_size=2048, intermediate_size=6144),
}
COMMON = dict(model_type="qwen3", vocab_size=151_936, num_hidden_layers=28,
              num_attention_heads=16, num_key_value_heads=8, head_dim=128,
              tie_word_embeddings=True, rope_theta=1_000_000.0, max_position_embeddings=4096)
# (name, compute options, minibatches per step) per shape. "static": compile with
# dynamic=False; "micro16": one optimizer step over the 64 samples, gradients accumulated over
# 16-row micro-batches (a real GRPO step's layout: one update per version).
C = {"compile": True}
S = {**C, "compile_dynamic": False}
M16 = {**S, "micro_batch_rows": 16}
VARIANTS = {
    "0.6B": [("eager bf16", {}, 4), ("compile", C, 4), ("compile", C, 2),
             ("compile static", S, 4),
             ("static micro16", M16, 1),
             ("static micro32", {**S, "micro_batch_rows": 32}, 1),
             ("micro32 cudnn-attn chunk16k", {**S, "micro_batch_rows": 32,
                                              "attention_backend": "cudnn",
                                              "logprob_chunk_tokens": 16384}, 1),
             ("micro16 chunk16k", {**M16, "logprob_chunk_tokens": 16384}, 1),
             ("micro16 cudnn-attn", {**M16, "attention_backend": "cudnn"}, 1),
             ("micro16 whole-model", {**M16, "compile_scope": "model"}, 1),
             ("micro16 max-autotune", {**M16, "compile_mode": "max-autotune-no-cudagraphs"}, 1),
             ("compile + AC", {**C, "activation_checkpointing": True}, 1),
             ("FSDP2(1 GPU) + compile + AC",
              {**C, "activation_checkpointing": True, "fsdp": True}, 1)],
    "1.7B": [("eager bf16", {}, 8), ("compile", {"compile": True}, 4),
             ("compile + AC", {"compile": True, "activation_checkpointing": True}, 2)],
}


def model_config(shape: str, quick: bool) -> ModelConfig:
    if quick:
        return ModelConfig(**{**COMMON, "vocab_size": 512, "num_hidden_layers": 2,
                              "head_dim": 16, "hidden_size": 64, "intermediate_size": 128})
    return ModelConfig(**COMMON, **SHAPES[shape])


def samples(num: int, prompt: int, response: int, vocab: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    now = datetime.now(UTC)
    return [Sample(
        run_id="bench", sample_id=f"s{i}", group_id=f"g{i // 8}", prompt_id=f"p{i // 8}",
        sample_index=i % 8, producer_id="bench", policy_version=0,
        prompt_tokens=rng.integers(0, vocab, size=prompt, dtype=np.int32),
        response_tokens=rng.integers(0, vocab, size=response, dtype=np.int32),
        logprobs=-rng.exponential(1.0, size=response).astype(np.float32),
        loss_mask=np.ones(response, dtype=bool), reward=float(rng.random()),
        finish_reason="length", seed=i, started_at=now, finished_at=now) for i in range(num)]


def step_flops(c: ModelConfig, num_seqs: int, seq: int) -> float:
    attn_params = c.hidden_size * c.head_dim * (2 * c.num_attention_heads
                                                + 2 * c.num_key_value_heads)
    n = c.num_hidden_layers * (attn_params + 3 * c.hidden_size * c.intermediate_size)
    n += c.vocab_size * c.hidden_size
    tokens = num_seqs * seq
    attn_fwd = 2 * c.num_hidden_layers * seq**2 * c.num_attention_heads * c.head_dim * num_seqs
    return 8 * n * tokens + 4 * attn_fwd


def matmul_tflops(device: torch.device) -> float:
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / float(np.median(times[5:])) / 1e12


def measure(shape: str, name: str, options: dict, minibatches: int, quick: bool,
            device: torch.device, num_steps: int) -> dict:
    torch.manual_seed(0)
    torch._dynamo.reset()  # each variant compiles afresh (no dynamic shapes carried over)
    cfg = model_config(shape, quick)
    num_seqs, prompt, response = (8, 8, 24) if quick else (64, 256, 768)
    compute = ComputeConfig(device=str(device), precision="bf16" if device.type == "cuda"
                            else "fp32", **options) if device.type == "cuda" else ComputeConfig()
    learner = Learner(CausalLM(cfg), LearnerSetup(
        trainer=TrainerSection(lr=1e-6, weight_decay=0.0, grad_clip=1.0, minibatches=minibatches,
                               algorithm=AlgorithmConfig(), compute=compute),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo))
    rows = samples(num_seqs, prompt, response, cfg.vocab_size)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(num_steps + 2):  # two warm-up steps (compilation, allocator)
        _sync(device)
        t0 = time.perf_counter()
        learner.step(rows, [1.0] * num_seqs, version=i)  # type: ignore[arg-type]
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[2:]))
    flops = step_flops(cfg, num_seqs, prompt + response)
    return {"shape": shape, "variant": name, "minibatches": minibatches, "options": options,
            "first_step_s": times[0], "step_s": step_s, "steps_s": times[2:],
            "tokens_per_s": num_seqs * (prompt + response) / step_s,
            "tflops": flops / step_s / 1e12,
            "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                             if device.type == "cuda" else 0.0)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _init_single_rank() -> None:
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl", init_method="tcp://127.0.0.1:29517",
                                             rank=0, world_size=1)


def run(out: Path, quick: bool, shapes: list[str], num_steps: int,
        only: set[str] | None = None) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = machine_info()
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
    info["torch"] = torch.__version__
    matmul = matmul_tflops(device) if device.type == "cuda" else float("nan")
    cases: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    path = out / "trainer_mfu.json"
    for shape in shapes:
        for name, options, minibatches in VARIANTS[shape]:
            if only is not None and f"{shape}/{name}/{minibatches}" not in only:
                continue
            if options.get("fsdp") and device.type == "cuda":
                _init_single_rank()
            try:
                case = measure(shape, name, options, minibatches, quick, device, num_steps)
            except Exception as e:  # record OOMs and failures rather than lose the other cases
                case = {"shape": shape, "variant": name, "error": f"{type(e).__name__}: {e}"[:300]}
            torch.cuda.empty_cache() if device.type == "cuda" else None
            print(json.dumps(case), flush=True)
            cases.append(case)
            # after every case, so a run cut short still leaves what it measured
            path.write_text(json.dumps({"info": info, "matmul_tflops": matmul,
                                        "peak_tflops": PEAK_TFLOPS, "cases": cases}, indent=2))
    return path


def record(path: Path) -> None:
    """BENCHMARKS.md section and PNG from a results JSON (run where matplotlib is)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _carry_over(json.loads(path.read_text()))
    info, matmul, peak = data["info"], data["matmul_tflops"], data["peak_tflops"]
    ok = [c for c in data["cases"] if "tflops" in c]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trainer_mfu.json").write_text(json.dumps(data, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(ok) + 1.5))
    labels = [f"{c['shape']} {c['variant']}" for c in ok]
    mfu = [100 * c["tflops"] / peak for c in ok]
    ax.barh(labels, mfu, color=["tab:green" if m >= 40 else "tab:red" for m in mfu])
    ax.axvline(40, color="black", linestyle="--", label="goal 40% MFU")
    for i, m in enumerate(mfu):
        ax.text(m, i, f" {m:.1f}%", va="center")
    ax.set_xlabel(f"MFU vs {peak:.0f} TFLOP/s bf16 peak")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = RESULTS / "trainer_mfu.png"
    fig.savefig(png, dpi=110)
    lines = ["<!-- trainer_mfu:start -->", "## trainer_mfu", "",
             f"{info['date']} · {info['card']} · torch {info['torch']} · Python {info['python']}"
             f" · bf16 8192³ matmul measured in the same run: {matmul:.0f} TFLOP/s", "",
             "| shape | variant | minibatches | step | tokens/s | model TFLOP/s | MFU (989) "
             "| vs matmul | peak mem | goal ≥ 40% |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in data["cases"]:
        if "error" in c:
            lines.append(f"| {c['shape']} | {c['variant']} | | {c['error'][:80]} | | | | | | |")
            continue
        m = 100 * c["tflops"] / peak
        variant = c["variant"] + (f" (earlier run, {c['carried_from']})"
                                  if "carried_from" in c else "")
        lines.append(f"| {c['shape']} | {variant} | {c['minibatches']} | "
                     f"{c['step_s'] * 1e3:,.0f} ms | {c['tokens_per_s']:,.0f} | "
                     f"{c['tflops']:.0f} | {m:.1f}% | "
                     f"{100 * c['tflops'] / c.get('matmul_tflops', matmul):.1f}% | "
                     f"{c['peak_mem_gib']:.1f} GiB | {'met' if m >= 40 else '**missed**'} |")
    lines += ["", f"![trainer_mfu]({png.relative_to(ROOT)})", "<!-- trainer_mfu:end -->"]
    _write_section("trainer_mfu", "\n".join(lines))


def _carry_over(data: dict) -> dict:
    """Keep the recorded cases of shapes this run did not measure (marked with their run's
    date and matmul baseline), so a run of one shape does not erase the other's figures."""
    previous = RESULTS / "trainer_mfu.json"
    if not previous.exists():
        return data
    old = json.loads(previous.read_text())
    shapes = {c["shape"] for c in data["cases"]}
    kept = [{"carried_from": old["info"]["date"], "matmul_tflops": old["matmul_tflops"]} | c
            for c in old["cases"] if c["shape"] not in shapes and "tflops" in c]
    return data | {"cases": data["cases"] + kept}


def _write_section(name: str, section: str) -> None:
    import re

    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = (pattern.sub(lambda _: section, text) if pattern.search(text)
            else text.rstrip() + "\n\n" + section + "\n")
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/trainer_mfu"))
    p.add_argument("--record", type=Path, help="write BENCHMARKS.md from this results JSON")
    p.add_argument("--quick", action="store_true", help="a tiny shape (CPU allowed)")
    p.add_argument("--shapes", default="0.6B,1.7B")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--only", help="comma-separated SHAPE/VARIANT/MINIBATCHES cases to run, "
                   "e.g. '0.6B/compile/2'")
    args = p.parse_args()
    if args.record:
        record(args.record)
        return
    only = set(args.only.split(",")) if args.only else None
    print(run(args.out, args.quick, args.shapes.split(","), args.steps, only))


if __name__ == "__main__":
    main()
