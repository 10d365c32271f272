"""LoRA against full fine-tuning (docs/lora.md): trainer step time and peak memory, weight-sync
bytes per version, and engine decode throughput with 0, 1 and 4 adapters in one batch.

    python3 -m bench.lora --shape 0.6B --out /tmp/lora --write    # on the GPU (~3 min, H100)
    python3 -m bench.lora --quick --out /tmp/lora                  # tiny shape, CPU (~1 min)

Trainer: `Learner.step` (bf16 autocast, fp32 master weights on CUDA; fp32 on CPU), full weights
vs `[trainer.lora] rank = 32` on all linear layers (base frozen and stored in bf16 on CUDA),
`--samples` samples of prompt + response tokens, median of `--steps` steps after one warm-up;
peak memory is `torch.cuda.max_memory_allocated` over the steps (CPU: not measured).
Weight sync: bytes of one version (full: every tensor in bf16, as the engine loads them; LoRA:
the adapter as published, fp32) and the time to encode it inline and decode + digest-check it.
Engine: `TorchEngine.generate` over `--requests` requests (random prompts, `--new-tokens` each,
greedy-free seeded sampling), base alone, one adapter for all, and four adapters round-robin;
tok/s counts generated tokens. With an adapter loaded the engine decodes eagerly (the fused
CUDA decoder has no low-rank term), so on CUDA the base figure is the fused decoder's.
`--write` puts the table in BENCHMARKS.md (section lora); `--from-json OUT/lora.json` writes it
from a GPU run's result file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
import torch

from bench.common import machine_info, replace_section
from bench.trainer_mfu import model_config, samples
from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import CausalLM, load_checkpoint
from streamrl.models.checkpoint import save_checkpoint
from streamrl.models.lora import LoraSpec, adapter_version, add_lora
from streamrl.producers.engine import TorchEngine
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.engine import EngineConfig
from streamrl.recipe.trainer import ComputeConfig, LoraConfig
from streamrl.schemas import decode_event, encode_event
from streamrl.weights import open_transport
from streamrl.weights.inline import load_inline, publish_version, tensor_bytes

NAME = "lora"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer(init: Path, lora: LoraConfig | None, rows: list, steps: int,
            device: torch.device) -> dict:
    compute = (ComputeConfig(device="cuda", precision="bf16", micro_batch_rows=8)
               if device.type == "cuda"
               else ComputeConfig())
    setup = LearnerSetup(trainer=TrainerSection(batch_size=len(rows), lr=1e-5, compute=compute,
                                                lora=lora),
                         temperature=1.0, advantage=grpo, loss=decoupled_ppo)
    learner = Learner.from_checkpoint(init, setup)
    learner.step(rows, [1.0] * len(rows), version=1)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for v in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        learner.step(rows, [1.0] * len(rows), version=v + 2)
        _sync(device)
        times.append(time.perf_counter() - t0)
    out = {"step_s": statistics.median(times),
           "peak_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda" else None),
           "version_bytes": tensor_bytes(learner.hf_state_dict())}
    del learner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def sync_cost(tensors: dict[str, torch.Tensor]) -> dict:
    """Publish + load with the digest check, ms: inline in the announcement when the adapter
    fits under the largest `inline_max_bytes` (60 MiB), else through the file transport."""
    with tempfile.TemporaryDirectory() as tmp, open_transport("file", directory=tmp) as t:
        t0 = time.perf_counter()
        published = publish_version(t, 1, tensors, inline_max_bytes=60 << 20)
        data = encode_event(published.announce(run_id="bench", parent=0))
        t1 = time.perf_counter()
        event = decode_event(data, "weights")
        if published.payload is not None:
            load_inline(event)
        else:
            t.load(event.locator, expected_digest=event.digest)
        t2 = time.perf_counter()
    return {"path": "inline" if published.payload is not None else "file transport",
            "event_bytes": len(data), "publish_ms": (t1 - t0) * 1e3, "load_ms": (t2 - t1) * 1e3}


def engine_rates(init: Path, adapters: list[dict[str, torch.Tensor]], args: argparse.Namespace,
                 device: torch.device, vocab: int) -> dict[str, float]:
    config = EngineConfig(max_batch_size=args.requests, max_seq_len=args.prompt + args.new_tokens,
                          device=str(device),
                          dtype="bfloat16" if device.type == "cuda" else "float32")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (args.prompt,), generator=g).tolist()
               for _ in range(args.requests)]
    params = SamplingParams(max_new_tokens=args.new_tokens, seed=1)
    rates = {}
    for label, num in (("base", 0), ("1 adapter", 1), ("4 adapters", 4)):
        engine = TorchEngine(load_checkpoint(init), config)
        ids = [f"a{i}" for i in range(num)]
        for i, name in enumerate(ids):
            engine.load_adapter(adapters[i % len(adapters)], name)
        reqs = [GenerationRequest(request_id=f"{label}-{i}", prompt_tokens=p, params=params,
                                  adapter=ids[i % num] if num else None)
                for i, p in enumerate(prompts)]
        engine.generate(reqs[:2])  # warm-up (graphs, kernels)
        reqs = [msgspec.structs.replace(r, request_id=r.request_id + "x") for r in reqs]
        _sync(device)
        t0 = time.perf_counter()
        results = engine.generate(reqs)
        _sync(device)
        rates[label] = sum(len(r.response_tokens) for r in results) / (time.perf_counter() - t0)
        engine.close()
    return rates


def random_adapters(init: Path, spec: LoraSpec, n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(n):
        model = add_lora(load_checkpoint(init), msgspec.structs.replace(spec, seed=seed))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 1e-3, generator=torch.Generator().manual_seed(seed))
        out.append({k: v.clone() for k, v in adapter_version(model, spec).items()})
    return out


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = model_config(args.shape, args.quick)
    rows = samples(args.samples, args.prompt, args.response, config.vocab_size)
    lora = LoraConfig(rank=args.rank, alpha=2.0 * args.rank)
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init"
        torch.manual_seed(0)
        save_checkpoint(CausalLM(config), init)
        full = trainer(init, None, rows, args.steps, device)
        adapted = trainer(init, lora, rows, args.steps, device)
        full_bf16 = 2 * sum(p.numel() for p in load_checkpoint(init).parameters())  # tied: once
        adapters = random_adapters(init, lora.spec(), 4)
        rates = engine_rates(init, adapters, args, device, config.vocab_size)
        sync = sync_cost(adapters[0])
    return {"info": machine_info(), "shape": "quick" if args.quick else args.shape,
            "device": str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
            "rank": args.rank, "samples": args.samples, "tokens": args.prompt + args.response,
            "full": full, "lora": adapted, "full_bf16_bytes": full_bf16,
            "adapter_bytes": adapted["version_bytes"], "sync": sync, "engine": rates,
            "requests": args.requests, "new_tokens": args.new_tokens}


def section(r: dict) -> str:
    f, lo, e = r["full"], r["lora"], r["engine"]

    def mem(x: dict) -> str:
        return "n/a (CPU)" if x["peak_gib"] is None else f"{x['peak_gib']:.2f} GiB"

    ratio = r["full_bf16_bytes"] / max(r["adapter_bytes"], 1)
    return "\n".join([
        f"`python3 -m bench.lora` on {r['device']} ({r['info'].get('date', '')}), shape "
        f"{r['shape']}, LoRA rank {r['rank']} on all linear layers (alpha = 2 x rank).",
        "",
        "| trainer | step time | peak memory | bytes per version |",
        "|---|---|---|---|",
        f"| full fine-tuning | {f['step_s']:.3f} s | {mem(f)} | {r['full_bf16_bytes'] / 2**20:.1f}"
        " MiB (bf16) |",
        f"| LoRA r{r['rank']} | {lo['step_s']:.3f} s | {mem(lo)} | "
        f"{r['adapter_bytes'] / 2**20:.1f} MiB (fp32 adapter, {r['sync']['path']}) |",
        "",
        f"{r['samples']} samples x {r['tokens']} tokens per step. A LoRA version is "
        f"{ratio:.1f}x fewer bytes than the full bf16 weights as published in fp32, "
        f"{2 * ratio:.1f}x if it were published in bf16 (goal: >= 20x at rank 32); "
        f"{r['sync']['path']}: publish {r['sync']['publish_ms']:.1f} ms, load + digest check "
        f"{r['sync']['load_ms']:.1f} ms ({r['sync']['event_bytes'] / 2**20:.2f} MiB event).",
        "",
        "| engine | tok/s | vs base |",
        "|---|---|---|",
        *[f"| {k} | {v:.0f} | {v / e['base']:.2f}x |" for k, v in e.items()],
        "",
        f"{r['requests']} requests in one batch, {r['new_tokens']} new tokens each; adapters are "
        "applied unmerged (base matmul + per-row low-rank term; the fused CUDA decoder is off "
        "while an adapter is loaded). Goal: >= 0.8x base with one adapter.",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shape", default="0.6B", choices=["0.6B", "1.7B"])
    p.add_argument("--quick", action="store_true", help="a tiny shape (CPU allowed)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--prompt", type=int, default=None)
    p.add_argument("--response", type=int, default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--write", action="store_true", help="write the BENCHMARKS.md section")
    p.add_argument("--from-json", type=Path, help="only write the section from a result file")
    args = p.parse_args()
    if args.from_json is not None:
        replace_section(NAME, section(json.loads(args.from_json.read_text())))
        return
    small = args.quick
    for name, quick, full in (("samples", 8, 64), ("prompt", 16, 256), ("response", 16, 768),
                              ("requests", 8, 64), ("new_tokens", 16, 128)):
        if getattr(args, name) is None:
            setattr(args, name, quick if small else full)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lora.json").write_text(json.dumps(result, indent=2))
    print(section(result))
    if args.write:
        replace_section(NAME, section(result))


if __name__ == "__main__":
    main()
