"""Prefix caching across turns (issue 17 item 2): multi-turn conversations through the embedded
engine with the prefix cache on and off, in one run.

    python -m bench.prefix_cache                  # CPU, tiny random model (seconds)
    python -m bench.prefix_cache --out DIR        # CUDA: random-init Qwen3-0.6B shape, bf16
    python -m bench.prefix_cache --record FILE    # file a CUDA run's JSON (on the CPU machine)

Workload: `conversations` agents in lockstep, `turns` turns each. Turn 0's prompt is a
`system`-token prompt; each response is exactly `response` tokens (no stop token); turn k+1's
prompt is turn k's prompt + response + `context` new tokens (a tool's answer), which is what the
agent endpoint's stitching produces. Both engines are the same except `prefix_caching`;
sampling is identical, so they generate the same tokens. Reported per engine: wall seconds,
prompt tokens prefilled, tokens served from the cache, and each turn's seconds. Each run writes
bench/results/prefix_cache_<device>.json; the BENCHMARKS.md section `prefix_cache` is rebuilt
from every such file present.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, replace_section
from streamrl.models import CausalLM, ModelConfig
from streamrl.producers.engine import EngineConfig, GenerationRequest, SamplingParams, TorchEngine

RESULTS = Path(__file__).resolve().parent / "results"
TINY = dict(model_type="qwen3", vocab_size=512, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=4096)
CPU = dict(conversations=8, turns=4, system=256, response=32, context=32)
CUDA = dict(conversations=64, turns=4, system=1024, response=256, context=128)


def converse(model: CausalLM, config: EngineConfig, shape: dict, sync) -> dict:
    engine = TorchEngine(model, config)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompts = torch.randint(0, vocab, (shape["conversations"], shape["system"]),
                            generator=gen).tolist()
    params = SamplingParams(temperature=1.0, max_new_tokens=shape["response"])
    turn_s, responses = [], []
    sync()
    start = time.perf_counter()
    for k in range(shape["turns"]):
        t0 = time.perf_counter()
        results = engine.generate([GenerationRequest(request_id=f"c{i}-t{k}", prompt_tokens=p,
                                                     params=params)
                                   for i, p in enumerate(prompts)])
        sync()
        turn_s.append(time.perf_counter() - t0)
        responses.append([r.response_tokens.tolist() for r in results])
        context = torch.randint(0, vocab, (len(prompts), shape["context"]), generator=gen)
        prompts = [[*p, *r.response_tokens.tolist(), *c]
                   for p, r, c in zip(prompts, results, context.tolist(), strict=True)]
    seconds = time.perf_counter() - start
    stats = engine.stats
    engine.close()
    return {"seconds": seconds, "turn_seconds": turn_s,
            "prefill_tokens": stats["num_prefill_tokens"],
            "cached_tokens": stats["num_cached_prefix_tokens"], "responses": responses}


def run(model: CausalLM, shape: dict, *, device: str, dtype: str, sync) -> dict:
    longest = shape["system"] + shape["turns"] * (shape["response"] + shape["context"])
    common = dict(max_batch_size=shape["conversations"], max_seq_len=longest + 16,
                  device=device, dtype=dtype, max_step_tokens=8192)
    converse(model, EngineConfig(**common), {**shape, "turns": 1}, sync)  # warm-up
    on = converse(model, EngineConfig(**common), shape, sync)
    off = converse(model, EngineConfig(**common, prefix_caching=False), shape, sync)
    same = on.pop("responses") == off.pop("responses")
    return {"shape": shape, "device": device, "dtype": dtype, "same_tokens": same,
            "cache_on": on, "cache_off": off, **machine_info(),
            **({"card": torch.cuda.get_device_name()} if device == "cuda" else {})}


def table(r: dict) -> str:
    s, on, off = r["shape"], r["cache_on"], r["cache_off"]
    where = r["card"] if r["device"] == "cuda" else r["machine"]
    head = (f"{where}, {r['date']}, {r['dtype']}; {s['conversations']} conversations x "
            f"{s['turns']} turns, {s['system']}-token first prompt, {s['response']} tokens per "
            f"response, {s['context']} new context tokens per turn; same tokens with and "
            f"without the cache: {r['same_tokens']}.")
    rows = ["| prefix cache | wall s | prefill tokens | cached tokens | s per turn |",
            "|---|---|---|---|---|"]
    for name, x in (("on", on), ("off", off)):
        turns = ", ".join(f"{t:.2f}" for t in x["turn_seconds"])
        rows.append(f"| {name} | {x['seconds']:.2f} | {x['prefill_tokens']:,} | "
                    f"{x['cached_tokens']:,} | {turns} |")
    ratio = off["prefill_tokens"] / max(on["prefill_tokens"], 1)
    return "\n".join([head, "", *rows, "",
                      f"Prefill tokens {ratio:.1f}x fewer with the cache; wall time "
                      f"{off['seconds'] / on['seconds']:.2f}x."])


def record() -> None:
    parts = []
    for device in ("cuda", "cpu"):
        path = RESULTS / f"prefix_cache_{device}.json"
        if path.exists():
            parts.append(table(json.loads(path.read_text())))
    replace_section("prefix_cache", "`bench/prefix_cache.py`: multi-turn conversations with "
                    "the engine's prefix cache on and off.\n\n" + "\n\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="CUDA run: also write the JSON here")
    parser.add_argument("--record", type=Path, help="file a CUDA run's JSON and rebuild")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.record:
        shutil.copyfile(args.record, RESULTS / "prefix_cache_cuda.json")
        record()
        return
    torch.manual_seed(0)
    if args.out:
        if not torch.cuda.is_available():
            raise SystemExit("--out runs the CUDA workload; without a GPU run it bare")
        from bench.engine_throughput import build_models

        _, model = build_models(seed=0)
        r = run(model, CUDA, device="cuda", dtype="bfloat16", sync=torch.cuda.synchronize)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "prefix_cache_cuda.json").write_text(json.dumps(r, indent=2) + "\n")
        device = "cuda"
    else:
        torch.set_num_threads(1)
        model = CausalLM(ModelConfig(**TINY)).eval()
        r = run(model, CPU, device="cpu", dtype="float32", sync=lambda: None)
        device = "cpu"
    (RESULTS / f"prefix_cache_{device}.json").write_text(json.dumps(r, indent=2) + "\n")
    print(table(r))
    record()


if __name__ == "__main__":
    main()
