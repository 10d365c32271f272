"""What a KL penalty to the reference policy costs, computed by the trainer or by the producers
(`[trainer.algorithm.kl] reference = "trainer" | "producer"`): `Learner.step` at the Qwen3-0.6B
shape (bf16 autocast, fp32 master weights, eager on CUDA; fp32 on CPU), 64 samples x 1024
tokens, without KL, with the learner's own reference forward, and with the reference logprobs
read from the batch as a producer recorded them; plus what the producer pays instead (one
`ReferenceScorer.score` forward over the same samples, in groups of 8, on the engine's dtype).

    python3 -m bench.reference_cost --out /tmp/ref            # on the GPU (~2 min on an H100)
    python3 -m bench.reference_cost --quick --out /tmp/ref    # a tiny shape, CPU allowed (~1 min)

Reported: median step time of each mode, peak GPU memory of each (the trainer-side reference
holds a second copy of the weights on the learner's GPU), the producer's scoring time per
sample and the memory of its reference copy, and kl_ref of a first step with one minibatch
(0 exactly with the trainer's reference; near 0 with the producer's, computed in another batch
shape and dtype). `--write` puts the table in BENCHMARKS.md (section reference_cost);
`--from-json OUT/reference_cost.json` writes it from a GPU run's result file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
import torch

from bench.common import machine_info, replace_section
from bench.trainer_mfu import model_config, samples
from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.hooks.rollout import RolloutSample
from streamrl.models import CausalLM
from streamrl.models.checkpoint import save_checkpoint
from streamrl.producers.reference import ReferenceScorer
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig, KLConfig, LossConfig
from streamrl.schemas import Sample

NAME = "reference_cost"
GROUP = 8  # samples a producer scores in one forward (one prompt's group)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score_on_producer(init: Path, rows: list[Sample], device: torch.device) -> tuple[
        list[Sample], dict]:
    """The producer's side: the rows with `reference_logprobs` scored by a `ReferenceScorer`
    (bf16 on CUDA, as an engine runs), its time per sample and the memory of its copy."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    _sync(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    scorer = ReferenceScorer(init, temperature=1.0, device=device, dtype=dtype)
    held = (torch.cuda.memory_allocated(device) - before) if device.type == "cuda" else sum(
        p.numel() * p.element_size() for p in scorer.model.parameters())
    as_rollout = [RolloutSample(
        prompt_tokens=s.prompt_tokens, response_tokens=s.response_tokens, logprobs=s.logprobs,
        loss_mask=s.loss_mask, response_versions=np.zeros(len(s.response_tokens), np.uint32),
        routed_experts=None, finish_reason=s.finish_reason, seed=s.seed,
        started_at=s.started_at, finished_at=s.finished_at) for s in rows]
    scorer.score(as_rollout[:GROUP])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    refs = [r for i in range(0, len(rows), GROUP) for r in scorer.score(as_rollout[i:i + GROUP])]
    _sync(device)
    seconds = time.perf_counter() - t0
    del scorer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    scored = [msgspec.structs.replace(s, reference_logprobs=r)
              for s, r in zip(rows, refs, strict=True)]
    return scored, {"score_s": seconds, "score_ms_per_sample": seconds / len(rows) * 1e3,
                    "reference_copy_gib": held / 2**30, "dtype": str(dtype)}


def measure(init: Path, rows: list[Sample], *, mode: str, minibatches: int, quick: bool,
            device: torch.device, num_steps: int) -> dict:
    """`mode`: "none" (kl_coef 0), "trainer" or "producer" (kl_coef 0.01)."""
    torch.manual_seed(0)
    compute = (ComputeConfig(device=str(device), precision="bf16") if device.type == "cuda"
               else ComputeConfig())
    kl_coef = 0.0 if mode == "none" else 0.01
    kl = KLConfig() if mode == "none" else KLConfig(reference=mode)  # type: ignore[arg-type]
    algorithm = AlgorithmConfig(loss_config=LossConfig(kl_coef=kl_coef), kl=kl)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    learner = Learner.from_checkpoint(init, LearnerSetup(
        trainer=TrainerSection(lr=1e-6, minibatches=minibatches, algorithm=algorithm,
                               compute=compute),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo, reference=init))
    times, metrics = [], []
    for i in range(num_steps + 1):  # one warm-up step (allocator, reference load)
        _sync(device)
        t0 = time.perf_counter()
        metrics.append(learner.step(rows, [1.0] * len(rows), version=i + 1))
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    del learner
    return {"mode": mode, "kl_coef": kl_coef, "minibatches": minibatches,
            "first_step_s": times[0], "step_s": float(np.median(times[1:] or times)),
            "steps_s": times[1:], "kl_ref_first": metrics[0].get("kl_ref"),
            "kl_ref_last": metrics[-1].get("kl_ref"), "peak_mem_gib": peak}


def table(result: dict) -> str:
    cases = {(c["mode"], c["minibatches"]): c for c in result["cases"]}
    base = cases[("none", 4)]["step_s"]
    lines = [f"Card: {result['info']['card']}; shape: {result['shape']}"
             f"{' (--quick)' if result['quick'] else ''}. `python3 -m bench.reference_cost`.",
             "", "| reference | step s (median) | vs no KL | peak GPU GiB | kl_ref, first step |",
             "|---|---|---|---|---|"]
    for mode in ("none", "trainer", "producer"):
        c, first = cases[(mode, 4)], cases.get((mode, 1), {})
        lines.append(f"| {mode} | {c['step_s']:.3f} | {c['step_s'] / base - 1:+.1%} | "
                     f"{c['peak_mem_gib']:.2f} | {first.get('kl_ref_first', '-')} |")
    p = result["producer"]
    lines += ["", f"Producer side (reference = \"producer\"): {p['score_ms_per_sample']:.2f} ms "
              f"per sample scored in groups of {GROUP} ({p['dtype']}), a reference copy of "
              f"{p['reference_copy_gib']:.2f} GiB on every producer."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--write", action="store_true", help="write the BENCHMARKS.md section")
    p.add_argument("--from-json", type=Path, help="only write the section from a result file")
    args = p.parse_args()
    if args.from_json is not None:
        replace_section(NAME, table(json.loads(args.from_json.read_text())))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model_config("0.6B", args.quick)
    num_seqs, prompt, response = (8, 8, 24) if args.quick else (64, 256, 768)
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init"
        torch.manual_seed(0)
        save_checkpoint(CausalLM(cfg), init)
        rows = samples(num_seqs, prompt, response, cfg.vocab_size)
        scored, producer = score_on_producer(init, rows, device)
        common: dict = {"quick": args.quick, "device": device}
        cases = [measure(init, rows, mode="none", minibatches=4, num_steps=args.steps, **common),
                 measure(init, rows, mode="trainer", minibatches=4, num_steps=args.steps,
                         **common),
                 measure(init, scored, mode="producer", minibatches=4, num_steps=args.steps,
                         **common),
                 measure(init, rows, mode="trainer", minibatches=1, num_steps=0, **common),
                 measure(init, scored, mode="producer", minibatches=1, num_steps=0, **common)]
    result = {"info": {**machine_info(), "card": (torch.cuda.get_device_name(device)
                                                   if device.type == "cuda" else "none (CPU)")},
              "quick": args.quick, "shape": f"{num_seqs} samples x {prompt + response} tokens",
              "cases": cases, "producer": producer}
    (out / "reference_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    print(table(result))
    if args.write:
        replace_section(NAME, table(result))


if __name__ == "__main__":
    main()
