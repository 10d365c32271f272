"""The RL-shaped engine workload of issue 17: paged KV + prefix sharing against a static cache
of the same memory, in one run. `bench/engine_throughput.py` runs it beside its own workload
and writes both into its BENCHMARKS.md section; alone:

    python bench/engine_rl.py --tiny          # CPU, tiny model: checks the harness (seconds)
    python bench/engine_rl.py --out DIR       # CUDA: 0.6B shape, caps 3072 and 8192 -> JSON

Workload: 64 prompts x 8 samples (request ids differ, so seeds do), 512-token prompts, response
lengths drawn once from a lognormal with median ~700 and mean ~916 (sigma 0.733), capped at
3,072 (and, second row, 8,192); each request's `max_new_tokens` is its length and no stop token
is set, so every sequence generates exactly its length. Two engines over the same weights and
the same KV memory (`kv_memory_fraction` of free memory, bf16):

- static: what the engine was before paging: every sequence reserves `max_seq_len`
  (`max_batch_size` = the sequences that fit), no prefix sharing;
- paged: `max_batch_size` = all 512, blocks of 16 tokens admitted by need, preemption by
  recompute if the tail runs the pool dry, the 8 samples of a prompt share its blocks.

Reported per engine: tok/s, most sequences resident at once, preemptions, prompt tokens
prefilled, and the fraction of the memory roofline at actual lengths: every decode step reads
all weights once plus the k/v each live sequence holds at its current length (prompt included,
read once per sequence), summed over steps with every sequence resident, at the device-copy
bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamrl.models import CausalLM, KVCache, ModelConfig
from streamrl.producers.engine import EngineConfig, GenerationRequest, SamplingParams, TorchEngine

SIGMA = 0.733  # mean / median = exp(sigma^2 / 2) = 916 / 700
MEAN = 916
TINY = dict(model_type="qwen3", vocab_size=512, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=4096)


def lengths(num: int, cap: int, seed: int = 0) -> list[int]:
    """Response lengths: lognormal, mean `MEAN` before the cap, at least 1."""
    mu = math.log(MEAN) - SIGMA**2 / 2
    draw = np.random.default_rng(seed).lognormal(mu, SIGMA, num)
    return [int(x) for x in np.clip(np.round(draw), 1, cap)]


def workload(vocab: int, num_prompts: int, group: int, prompt_len: int, cap: int
             ) -> list[GenerationRequest]:
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, vocab, (num_prompts, prompt_len), generator=gen).tolist()
    news = lengths(num_prompts * group, cap)
    return [GenerationRequest(
        request_id=f"p{i}s{j}", prompt_tokens=prompts[i],
        params=SamplingParams(temperature=1.0, max_new_tokens=news[i * group + j]))
        for i in range(num_prompts) for j in range(group)]


def roofline_s(model: CausalLM, reqs: list[GenerationRequest], bandwidth: float,
               kv_dtype: torch.dtype) -> float:
    """Fastest possible decode time with every sequence resident at its actual length."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_tok = KVCache.bytes_per_block(model.config, 1, kv_dtype)
    P = np.array([len(r.prompt_tokens) for r in reqs])
    L = np.array([r.params.max_new_tokens for r in reqs])
    total = 0.0
    for j in range(int(L.max())):
        live = j < L
        total += weight_bytes + kv_tok * float((P[live] + j).sum())
    return total / bandwidth


def run_engine(model: CausalLM, config: EngineConfig, reqs: list[GenerationRequest],
               sync) -> dict:
    engine = TorchEngine(model, config)
    warm = [GenerationRequest(request_id=f"w{i}", prompt_tokens=r.prompt_tokens,
                              params=SamplingParams(temperature=1.0, max_new_tokens=2))
            for i, r in enumerate(reqs[: config.max_batch_size])]
    engine.generate(warm)  # compiles kernels; graphs for the buckets come as batches shrink
    engine.scheduler.max_running = 0  # count residency over the measured run only
    before = engine.stats
    sync()
    start = time.perf_counter()
    results = engine.generate(reqs)
    sync()
    seconds = time.perf_counter() - start
    after = engine.stats
    tokens = sum(r.num_response_tokens for r in results)
    assert tokens == sum(r.params.max_new_tokens for r in reqs), "a sequence ended early"
    engine.close()
    return {"tok_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
            "max_resident": after["max_running"],
            "preemptions": after["num_preemptions"] - before["num_preemptions"],
            "prefill_tokens": after["num_prefill_tokens"] - before["num_prefill_tokens"],
            "max_batch_size": config.max_batch_size, "kv_blocks": after["num_kv_blocks"]}


def compare(model: CausalLM, reqs: list[GenerationRequest], *, device: str, dtype: str,
            kv_bytes: int, bandwidth: float | None, max_step_tokens: int, sync) -> dict:
    """Static and paged engines over the same `kv_bytes` of KV memory."""
    mc = model.config
    max_len = max(len(r.prompt_tokens) + r.params.max_new_tokens for r in reqs)
    bs = 16
    per_block = KVCache.bytes_per_block(mc, bs, getattr(torch, dtype))
    num_blocks = kv_bytes // per_block
    per_seq = -(-max_len // bs)
    common = dict(device=device, dtype=dtype, max_seq_len=max_len, kv_block_size=bs,
                  max_step_tokens=max_step_tokens)
    static_batch = max(1, min(len(reqs), (num_blocks - 1) // per_seq))
    static = EngineConfig(**common, max_batch_size=static_batch,
                          kv_blocks=static_batch * per_seq + 1, prefix_sharing=False)
    paged = EngineConfig(**common, max_batch_size=len(reqs), kv_blocks=num_blocks)
    out = {"kv_bytes": kv_bytes, "max_seq_len": max_len,
           "mean_response": float(np.mean([r.params.max_new_tokens for r in reqs])),
           "static": run_engine(model, static, reqs, sync),
           "paged": run_engine(model, paged, reqs, sync)}
    if bandwidth is not None:
        roof = roofline_s(model, reqs, bandwidth, getattr(torch, dtype))
        out["roofline_tok_s"] = out["paged"]["tokens"] / roof
        for name in ("static", "paged"):
            out[name]["roofline_frac"] = out[name]["tok_s"] / out["roofline_tok_s"]
    return out


def run_gpu(model: CausalLM, bandwidth: float, caps: tuple[int, ...] = (3072, 8192),
            kv_fraction: float = 0.9) -> dict:
    """The issue's workload on CUDA, bf16, for each response cap."""
    def sync() -> None:
        torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    kv_bytes = int(free * kv_fraction)
    rows = {}
    for cap in caps:
        reqs = workload(model.config.vocab_size, 64, 8, 512, cap)
        rows[str(cap)] = compare(model, reqs, device="cuda", dtype="bfloat16",
                                 kv_bytes=kv_bytes, bandwidth=bandwidth,
                                 max_step_tokens=8192, sync=sync)
    return {"num_prompts": 64, "group": 8, "prompt_tokens": 512, "kv_fraction": kv_fraction,
            "caps": rows}


def run_tiny(num_prompts: int = 4) -> dict:
    """CPU, a tiny random model: `num_prompts` x 4, 32-token prompts, lengths scaled by 1/32."""
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(**TINY)).eval()
    reqs = [GenerationRequest(request_id=r.request_id, prompt_tokens=r.prompt_tokens,
                              params=SamplingParams(temperature=1.0,
                                                    max_new_tokens=-(-r.params.max_new_tokens
                                                                     // 32)))
            for r in workload(TINY["vocab_size"], num_prompts, 4, 32, 3072)]
    kv = KVCache.bytes_per_block(model.config, 16, torch.float32) * 40
    return compare(model, reqs, device="cpu", dtype="float32", kv_bytes=kv, bandwidth=None,
                   max_step_tokens=64, sync=lambda: None)


def summary(r: dict) -> str:
    s, p = r["static"], r["paged"]
    roof = (f" | roofline {r['roofline_tok_s']:,.0f} tok/s: static {s['roofline_frac']:.0%}, "
            f"paged {p['roofline_frac']:.0%}" if "roofline_tok_s" in r else "")
    return (f"cap {r['max_seq_len']}: static {s['tok_s']:,.0f} tok/s ({s['max_resident']} "
            f"resident, {s['prefill_tokens']} prefill tokens) | paged+shared {p['tok_s']:,.0f} "
            f"tok/s ({p['max_resident']} resident, {p['preemptions']} preemptions, "
            f"{p['prefill_tokens']} prefill tokens){roof}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU harness check, tiny model")
    parser.add_argument("--out", type=Path, help="write engine_rl.json here (CUDA)")
    args = parser.parse_args()
    if args.tiny:
        print(summary(run_tiny()))
        return
    if not torch.cuda.is_available():
        raise SystemExit("the full workload needs a CUDA GPU; --tiny runs on CPU")
    from bench.engine_throughput import build_models, copy_bandwidth

    _, ours = build_models(seed=0)
    r = run_gpu(ours, copy_bandwidth())
    for row in r["caps"].values():
        print(summary(row))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "engine_rl.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
