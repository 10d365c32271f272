"""The planner's trainer memory per GPU against `torch.cuda.max_memory_allocated` of real
training steps, at small Qwen3 shapes on one GPU (tensor = pipeline = expert = data = 1).

    python -m bench.plan_memory --out /tmp/plan_memory          # on the GPU: writes JSON
    python -m bench.plan_memory --record /tmp/plan_memory/plan_memory.json   # BENCHMARKS.md
    python -m bench.plan_memory --quick --out /tmp/plan_memory  # a tiny shape, CPU allowed (no
                                                                # memory figure; checks the code)

Each case builds the repository's learner (`Learner`: bf16 autocast over fp32 weights, fused
AdamW, gradients set to None before each forward), runs two warm-up steps (Adam state exists
after the first), resets the peak and runs a third. The plan for the same shape is
`streamrl.plan.torch_learner_memory` (the torch backend's layout, streamrl/plan/memory.py) with
the step's rows x tokens as one micro-batch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import msgspec
import torch

from bench.common import machine_info, replace_section
from streamrl.plan import count_params, read_shape, torch_learner_memory

SHAPE = {"model_type": "qwen3", "vocab_size": 32000, "hidden_size": 1024,
         "intermediate_size": 3072, "num_hidden_layers": 8, "num_attention_heads": 16,
         "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": False,
         "rope_theta": 1_000_000.0, "max_position_embeddings": 4096}
QUICK = SHAPE | {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "head_dim": 16}
CASES = {"no recompute": False, "recompute": True}
ROWS, PROMPT, RESPONSE = 4, 128, 384


def planned(raw: dict, *, rows: int, seq_len: int, recompute: bool) -> dict[str, int]:
    shape = read_shape(raw)
    memory = torch_learner_memory(shape, count_params(shape), rows=rows, seq_len=seq_len,
                                  recompute=recompute)
    return msgspec.structs.asdict(memory) | {"total": memory.total}


def measure(raw: dict, *, recompute: bool, device: torch.device, rows: int = ROWS,
            prompt: int = PROMPT, response: int = RESPONSE) -> dict:
    """One case: the plan and, on CUDA, the peak allocated bytes of a steady-state step."""
    from bench.trainer_mfu import samples
    from streamrl.consumers.trainer import decoupled_ppo, grpo
    from streamrl.consumers.trainer.learner import Learner, LearnerSetup
    from streamrl.models import CausalLM, ModelConfig
    from streamrl.recipe.config import TrainerSection
    from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig

    torch.manual_seed(0)
    cuda = device.type == "cuda"
    compute = (ComputeConfig(device=str(device), precision="bf16",
                             activation_checkpointing=recompute) if cuda else ComputeConfig())
    config = ModelConfig.from_hf_dict(raw)
    learner = Learner(CausalLM(config), LearnerSetup(
        trainer=TrainerSection(lr=1e-6, grad_clip=1.0, minibatches=1,
                               algorithm=AlgorithmConfig(), compute=compute),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo))
    batch = samples(rows, prompt, response, config.vocab_size)
    for version in range(2):
        learner.step(batch, [1.0] * rows, version=version)  # type: ignore[arg-type]
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        learner.step(batch, [1.0] * rows, version=2)  # type: ignore[arg-type]
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    plan = planned(raw, rows=rows, seq_len=prompt + response, recompute=recompute)
    return {"recompute": recompute, "rows": rows, "seq_len": prompt + response, "plan": plan,
            "measured": peak,
            "ratio": None if peak is None else plan["total"] / peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/plan_memory"))
    p.add_argument("--record", type=Path, help="write BENCHMARKS.md from this results JSON")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.record is not None:
        record(json.loads(args.record.read_text()))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raw = QUICK if args.quick else SHAPE
    cases = {name: measure(raw, recompute=r, device=device) for name, r in CASES.items()}
    info = machine_info()
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan_memory.json").write_text(json.dumps({"info": info, "shape": raw,
                                                           "cases": cases}, indent=2))
    for name, c in cases.items():
        measured = ("-" if c["measured"] is None else
                    f"{c['measured'] / 2**30:.3f} GiB, plan/measured {c['ratio']:.3f}")
        print(f"{name}: plan {c['plan']['total'] / 2**30:.3f} GiB, measured {measured}")


def record(data: dict) -> None:
    """The BENCHMARKS.md section from a GPU run's JSON."""
    info, raw, cases = data["info"], data["shape"], data["cases"]
    if any(c["measured"] is None for c in cases.values()):
        raise SystemExit("no measured peak in this JSON (a CPU or --quick run)")
    gib = 2**30
    rows = "\n".join(
        f"| {name} | " + " | ".join(f"{c['plan'][k] / gib:.3f}" for k in TERMS)
        + f" | {c['plan']['total'] / gib:.3f} | {c['measured'] / gib:.3f} | {c['ratio']:.3f} |"
        for name, c in cases.items())
    millions = count_params(read_shape(raw)).total / 1e6
    replace_section("plan_memory", (
        f"`python -m bench.plan_memory` on {info['card']}, {info['date']}: `streamrl plan`'s "
        "trainer memory per GPU for the torch backend (streamrl/plan/memory.py) against "
        "`torch.cuda.max_memory_allocated` of a steady-state `Learner.step` (bf16 autocast, "
        f"fp32 weights, fused AdamW), a Qwen3 shape of {millions:.0f}M parameters, {ROWS} rows "
        f"x {PROMPT + RESPONSE} tokens. GiB.\n\n"
        "| case | " + " | ".join(TERMS).replace("_", " ") + " | plan | measured "
        "| plan/measured |\n|" + "---|" * (len(TERMS) + 4) + "\n" + rows))


TERMS = ("weights", "gradients", "optimizer", "activations", "logits", "not_live")


if __name__ == "__main__":
    main()
