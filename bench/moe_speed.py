"""MoE at hardware speed (issue 15): grouped expert compute against the per-expert loop, in the
engine's decode and in a trainer forward + backward, with routing capture and replay.

    python -m bench.moe_speed --out /tmp/moe                 # on the GPU: measures, writes JSON
    python -m bench.moe_speed --record /tmp/moe/moe_speed.json   # write the BENCHMARKS.md section
    python -m bench.moe_speed --quick --out /tmp/moe         # a tiny shape, CPU allowed

Shape: Qwen3-30B-A3B cut to 8 layers (hidden 2048, 32 q / 4 kv heads of 128, 128 experts of
768, top-8, vocab 151936, untied), random init, bf16, built directly on the GPU.

Engine: batch 128, 128 prompt tokens + 256 new, temperature 1, no stop tokens. Cases: the eager
model with the per-expert loop (the issue's baseline), the eager model with grouped experts,
the fused decoder with grouped experts replayed from CUDA graphs (what `decode="auto"` runs),
and that again with routing capture switched off (the capture's cost). Roofline: each decode
step must read the weights it touches (every non-expert matrix except the embedding, of which
it reads only B rows, plus the experts the step's routing actually hit, counted from the
recorded routing) and the KV of every sequence at its length, at the device-copy bandwidth
measured in the same run.

Trainer: forward + backward of the token-logprob loss (`fused_token_logprobs`) at 8 x 2048
tokens, no optimizer step, against a dense model of the same active size (MLP intermediate
k x 768) in the same run; per-expert loop, grouped, and grouped with routing replayed
(`forced_routing` = the routing of a no-grad forward). MFU counts 6 x active matmul params per
token (LM head included, embedding not) plus causal attention (2 L S^2 heads head_dim per
sequence forward, x3 with backward), against the H100 SXM bf16 dense peak (989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info, replace_section
from streamrl.models import CausalLM, ModelConfig
from streamrl.models.logprobs import fused_token_logprobs
from streamrl.models.moe import Experts, set_expert_impl
from streamrl.producers.engine import EngineConfig, GenerationRequest, SamplingParams, TorchEngine

NAME = "moe_speed"
PEAK_TFLOPS = 989.0  # H100 SXM bf16 dense, as bench/trainer_mfu.py
FULL = dict(vocab_size=151936, hidden_size=2048, num_hidden_layers=8, num_attention_heads=32,
            num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
            moe_intermediate_size=768, intermediate_size=6144)
QUICK = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
             moe_intermediate_size=32, intermediate_size=64)
WORKLOAD = {False: dict(batch=128, prompt=128, new=256, train_rows=8, train_len=2048),
            True: dict(batch=2, prompt=4, new=3, train_rows=1, train_len=16)}
ROOFLINE_GOAL, MFU_GOAL, REPLAY_GOAL = 0.5, 0.30, 0.10


def model_config(shape: dict, moe: bool) -> ModelConfig:
    fields = dict(shape)
    if moe:  # every layer sparse: intermediate_size (the dense MLP's) goes unused
        return ModelConfig(model_type="qwen3_moe", norm_topk_prob=True, rope_theta=1e6,
                           max_position_embeddings=4096, **fields)
    # Dense of the same active size: one MLP as wide as the k experts a token uses.
    for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size"):
        fields.pop(key)
    return ModelConfig(model_type="qwen3", rope_theta=1e6, max_position_embeddings=4096,
                       **fields)


def build(config: ModelConfig, device: torch.device, dtype: torch.dtype) -> CausalLM:
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:  # init in place: 4.8B expert params never touch host memory
            return CausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Give back what a finished case held (KV cache, graph pools) before the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth, read + write bytes/s, median of 20 1-GiB copies."""
    src = torch.randn(2**28 if device.type == "cuda" else 2**16, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(25):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times[5:])


def active_matmul_params(c: ModelConfig) -> int:
    """Matmul parameters one token runs through (LM head once, embedding not)."""
    attn = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    if c.is_moe:
        mlp = (3 * c.hidden_size * c.moe_intermediate_size * c.num_experts_per_tok
               + c.hidden_size * c.num_experts)  # + router
    else:
        mlp = 3 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * (attn + mlp) + c.vocab_size * c.hidden_size


# -- engine -------------------------------------------------------------------------------------


def engine_case(model: CausalLM, device: torch.device, dtype: str, w: dict, *, decode: str,
                impl: str, capture: bool = True) -> dict:
    set_expert_impl(model, impl)
    config = EngineConfig(device=str(device), dtype=dtype, decode=decode,
                          max_batch_size=w["batch"], max_seq_len=w["prompt"] + w["new"] + 8)
    engine = TorchEngine(model, config)
    if not capture:
        engine.buffers.routed = None  # sample_next then records no routing
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, model.config.vocab_size, (w["batch"], w["prompt"]), generator=gen)
    params = SamplingParams(temperature=1.0, max_new_tokens=w["new"])
    warm = [GenerationRequest(request_id=f"w{i}", prompt_tokens=p.tolist(),
                              params=SamplingParams(temperature=1.0, max_new_tokens=4))
            for i, p in enumerate(prompts)]
    engine.generate(warm)  # compiles kernels, captures the batch's graph
    for i, p in enumerate(prompts):
        engine.add_request(GenerationRequest(request_id=f"r{i}", prompt_tokens=p.tolist(),
                                             params=params))
    results, steps = [], []
    sync(device)
    start = time.perf_counter()
    while engine.has_unfinished():
        t0 = time.perf_counter()
        results += engine.step()
        steps.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    tokens = sum(r.num_response_tokens for r in results)
    routed = [r.routed_experts for r in results if r.routed_experts is not None]
    del engine
    free_memory(device)
    return {"tok_s": tokens / total, "total_s": total, "tokens": tokens,
            "decode_step_ms_median": 1e3 * statistics.median(steps[1:] or steps),
            "routed": np.stack(routed) if routed else None}  # [B, new, L, k]


def touched_experts(routed: np.ndarray) -> np.ndarray:
    """Distinct experts each step hit, per layer: routed [B, new, L, k] -> [new, L]."""
    B, new, L, k = routed.shape
    per_step = routed.transpose(1, 2, 0, 3).reshape(new, L, B * k)
    return np.array([[len(np.unique(per_step[j, layer])) for layer in range(L)]
                     for j in range(new)])


def roofline(model: CausalLM, w: dict, routed: np.ndarray, bandwidth: float) -> dict:
    c = model.config
    expert_params = sum(p.numel() for m in model.modules() if isinstance(m, Experts)
                        for p in m.parameters())
    size = next(model.parameters()).element_size()
    dense_bytes = size * (sum(p.numel() for p in model.parameters()) - expert_params
                          - model.model.embed_tokens.weight.numel())
    per_expert = size * 3 * c.hidden_size * c.moe_intermediate_size
    touched = touched_experts(routed)  # [new, L]
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * size
    step_s = [(dense_bytes + per_expert * touched[j].sum()
               + w["batch"] * kv_per_token * (w["prompt"] + j)) / bandwidth
              for j in range(touched.shape[0])]
    return {"dense_weight_bytes": dense_bytes, "expert_bytes": per_expert,
            "mean_touched_experts_per_layer": float(touched.mean()),
            "kv_bytes_per_token": kv_per_token, "step_ms": 1e3 * statistics.mean(step_s),
            "tok_s": w["batch"] * len(step_s) / sum(step_s)}


def run_engine(device: torch.device, quick: bool, bandwidth: float) -> dict:
    w = WORKLOAD[quick]
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    model = build(model_config(QUICK if quick else FULL, True), device, getattr(torch, dtype))
    cases = {"eager, expert loop": dict(decode="eager", impl="loop"),
             "eager, grouped": dict(decode="eager", impl="grouped")}
    if device.type == "cuda":
        cases |= {"fused + graphs, grouped": dict(decode="fused", impl="grouped"),
                  "fused + graphs, grouped, no routing capture":
                  dict(decode="fused", impl="grouped", capture=False)}
    out = {name: engine_case(model, device, dtype, w, **kw) for name, kw in cases.items()}
    routed = out["eager, grouped"]["routed"]
    roof = roofline(model, w, routed, bandwidth)
    for case in out.values():
        case.pop("routed")
        case["roofline_frac"] = case["tok_s"] / roof["tok_s"]
    return {"workload": w, "roofline": roof, "cases": out}


# -- trainer ------------------------------------------------------------------------------------


def train_case(model: CausalLM, device: torch.device, w: dict, *, impl: str = "grouped",
               replay: bool = False, steps: int = 3) -> dict:
    if model.config.is_moe:
        set_expert_impl(model, impl)
    model.train()
    B, T = w["train_rows"], w["train_len"]
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, model.config.vocab_size, (B, T + 1), generator=gen).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions = torch.arange(T, device=device).expand(B, T)
    forced = None
    if replay:
        with torch.no_grad():
            forced = model(inputs, positions, return_hidden=True).routed_experts

    def step() -> None:
        hidden = model(inputs, positions, forced_routing=forced, return_hidden=True).hidden
        loss = -fused_token_logprobs(hidden, model.lm_head.weight, targets).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    c = model.config
    flops = (6 * active_matmul_params(c) * B * T
             + 3 * 2 * c.num_hidden_layers * T * T * c.num_attention_heads * c.head_dim * B)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"tok_s": B * T / seconds, "step_s": seconds, "tflops": flops / seconds / 1e12,
            "mfu": flops / seconds / 1e12 / PEAK_TFLOPS, "peak_mem_gib": peak}


def run_trainer(device: torch.device, quick: bool) -> dict:
    w = WORKLOAD[quick]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = QUICK if quick else FULL
    dense = build(model_config(shape, False), device, dtype)
    steps = 1 if quick else 3
    cases = {"dense, same active size": train_case(dense, device, w, steps=steps)}
    del dense
    moe = build(model_config(shape, True), device, dtype)
    cases["MoE, expert loop"] = train_case(moe, device, w, impl="loop", steps=steps)
    cases["MoE, grouped"] = train_case(moe, device, w, steps=steps)
    cases["MoE, grouped, routing replay"] = train_case(moe, device, w, replay=True, steps=steps)
    return {"workload": w, "active_params": active_matmul_params(moe.config), "cases": cases}


# -- report -------------------------------------------------------------------------------------


def section(data: dict) -> str:
    info, eng, tr = data["info"], data["engine"], data["trainer"]
    ew, tw, roof = eng["workload"], tr["workload"], eng["roofline"]
    met = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    lines = [f"{info['date']} · {info['machine']} · GPU: {info['card']} · shape: "
             f"{data['shape']}", "",
             f"Engine: batch {ew['batch']}, {ew['prompt']} + {ew['new']} tokens. Roofline "
             f"{roof['tok_s']:,.0f} tok/s ({roof['step_ms']:.2f} ms a step: "
             f"{roof['dense_weight_bytes'] / 1e9:.2f} GB of non-expert weights, "
             f"{roof['mean_touched_experts_per_layer']:.1f} experts touched per layer and step, "
             f"KV) at {data['copy_bandwidth_gb_s']:.0f} GB/s.", "",
             "| engine | tok/s | decode step | vs roofline | goal ≥ 50% |", "|---|---|---|---|---|"]
    for name, c in eng["cases"].items():
        lines.append(f"| {name} | {c['tok_s']:,.0f} | {c['decode_step_ms_median']:.2f} ms | "
                     f"{c['roofline_frac']:.1%} | {met(c['roofline_frac'] >= ROOFLINE_GOAL)} |")
    cases = eng["cases"]
    if "fused + graphs, grouped, no routing capture" in cases:
        off = cases["fused + graphs, grouped, no routing capture"]["tok_s"]
        cost = off / cases["fused + graphs, grouped"]["tok_s"] - 1
        lines += ["", f"Routing capture costs the fused engine {cost:+.1%} "
                      f"(goal < 10%: {met(cost < REPLAY_GOAL)})."]
    lines += ["", f"Trainer: forward + backward at {tw['train_rows']} x {tw['train_len']} "
                  f"tokens, {tr['active_params'] / 1e9:.2f}B active matmul params.", "",
              "| trainer | tok/s | TFLOP/s | MFU | peak mem | goal MFU ≥ 30% |",
              "|---|---|---|---|---|---|"]
    for name, c in tr["cases"].items():
        mem = "" if c["peak_mem_gib"] is None else f"{c['peak_mem_gib']:.1f} GiB"
        lines.append(f"| {name} | {c['tok_s']:,.0f} | {c['tflops']:.1f} | {c['mfu']:.1%} | "
                     f"{mem} | {met(c['mfu'] >= MFU_GOAL)} |")
    t = tr["cases"]
    replay = t["MoE, grouped"]["tok_s"] / t["MoE, grouped, routing replay"]["tok_s"] - 1
    lines += ["", f"Grouped vs loop: engine eager {cases['eager, grouped']['tok_s'] / cases['eager, expert loop']['tok_s']:.1f}×, "  # noqa: E501
                  f"trainer {t['MoE, grouped']['tok_s'] / t['MoE, expert loop']['tok_s']:.1f}×; "
                  f"MoE grouped vs dense of the same active size: "
                  f"{t['MoE, grouped']['tok_s'] / t['dense, same active size']['tok_s']:.2f}×. "
                  f"Routing replay costs the trainer {replay:+.1%} "
                  f"(goal < 10%: {met(replay < REPLAY_GOAL)})."]
    return "\n".join(lines)


def run(out: Path, quick: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not quick:
        raise SystemExit("the full shape needs a CUDA GPU; pass --quick on CPU")
    info = machine_info()
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
    bandwidth = copy_bandwidth(device)
    data = {"info": info, "shape": "tiny (quick)" if quick else "Qwen3-30B-A3B, 8 layers",
            "copy_bandwidth_gb_s": bandwidth / 1e9, "engine": run_engine(device, quick, bandwidth)}
    free_memory(device)
    data["trainer"] = run_trainer(device, quick)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="measure; write JSON into this folder")
    parser.add_argument("--record", type=Path, help="write BENCHMARKS.md from this JSON")
    parser.add_argument("--quick", action="store_true", help="tiny shape, CPU allowed")
    args = parser.parse_args()
    if args.out:
        data = run(args.out, args.quick)
        print(section(data))
    if args.record:
        replace_section(NAME, section(json.loads(args.record.read_text())))


if __name__ == "__main__":
    main()
