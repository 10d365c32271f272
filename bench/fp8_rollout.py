"""FP8 rollouts on one GPU (issue 20): engine tok/s with BF16 vs FP8 weights, and what a weight
version costs to quantize, move and load, at the Qwen3-8B and Qwen3-0.6B shapes.

    python -m bench.fp8_rollout --out /tmp/fp8                 # on an H100: JSON into /tmp/fp8
    python -m bench.fp8_rollout --record /tmp/fp8/fp8_rollout.json   # BENCHMARKS.md section
    python -m bench.fp8_rollout --quick --out /tmp/fp8         # a small shape, minutes less

Workload (the issue's): 128-token random prompts, 256 new tokens each at temperature 1, no
stop tokens (every sequence generates all 256), random-init weights in bf16; batch 64 and 256
at the 8B shape, 128 at the 0.6B shape. Four engines on the same weights, one after the other:

- `bf16 fused`: the default CUDA engine (fused Triton decode replayed from CUDA graphs), the
  baseline;
- `bf16 eager`: the model's own forward;
- `fp8 fused`: `TorchEngine.use_fp8()` on the default engine: every projection an
  `Fp8Linear` (W8A8: 1x128 activation blocks, 128x128 weight blocks, one blockwise-scaled
  `scaled_mm` each; q|k|v and gate|up fused), decoded by the fused decoder from CUDA graphs;
- `fp8 eager`: the same FP8 layers through the model's own forward.

The FP8 layers' path ("scaled_mm", or "reference" with the reason cuBLASLt gave) is
recorded: a reference run is no FP8 figure.

Tok/s = generated tokens / wall time of `generate` (prefill included), after a warm-up.
Goal (issue 20): FP8 >= 1.3x BF16 at the 8B shape.

Weight sync per version, same shapes: bytes of the published tensors (bf16 vs FP8 + scales),
the trainer-side cast / `quantize_state` from fp32 master weights on the GPU, and the
engine's `load_weights` from device tensors (bf16: one `_foreach_copy_`; FP8: the FP8 layers'
weights and scales, then the bf16 rest).
Transports move those bytes at their own bandwidth (BENCHMARKS.md `weight_sync`).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from bench.common import RESULTS, machine_info, replace_section
from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import CausalLM, ModelConfig
from streamrl.models.fp8_linear import fp8_layers
from streamrl.producers.engine import EngineConfig, TorchEngine
from streamrl.weights.fp8 import quantize_state
from streamrl.weights.inline import tensor_bytes

PROMPT, NEW = 128, 256
QWEN3 = dict(model_type="qwen3", vocab_size=151_936, head_dim=128, rope_theta=1_000_000.0,
             max_position_embeddings=4096)
SHAPES = {  # name -> (config, batches)
    "8B": (dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
           (64, 256)),
    "0.6B": (dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
             (128,)),
}
QUICK = {"quick": (dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=4,
                        num_attention_heads=16, num_key_value_heads=8,
                        tie_word_embeddings=True), (32,))}
SMOKE = {"smoke": (dict(hidden_size=256, intermediate_size=384, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, vocab_size=1024,
                        tie_word_embeddings=True), (4,))}  # CPU: checks the script runs
VARIANTS = (("bf16 fused", "auto", False), ("bf16 eager", "eager", False),
            ("fp8 fused", "auto", True), ("fp8 eager", "eager", True))


def build(shape: dict, device: str) -> CausalLM:
    torch.manual_seed(0)
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = CausalLM(ModelConfig(**(QWEN3 | shape)))
        finally:
            torch.set_default_dtype(torch.float32)
    return model.eval()


def requests(batch: int, vocab: int, new: int, tag: str) -> list[GenerationRequest]:
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, vocab, (batch, PROMPT), generator=g)
    params = SamplingParams(temperature=1.0, max_new_tokens=new)
    return [GenerationRequest(request_id=f"{tag}{i}", prompt_tokens=p.tolist(), params=params)
            for i, p in enumerate(prompts)]


def throughput(model: CausalLM, batch: int, decode: str, fp8: bool, new: int) -> dict:
    device = str(next(model.parameters()).device)
    engine = TorchEngine(model, EngineConfig(max_batch_size=batch, max_seq_len=PROMPT + new,
                                             device=device, dtype="bfloat16", decode=decode))
    if fp8:
        engine.use_fp8()
    vocab = model.config.vocab_size
    engine.generate(requests(min(batch, 8), vocab, 8, "warm"))  # graphs, cuBLAS, allocator
    reqs = requests(batch, vocab, new, "r")
    _sync()
    t0 = time.perf_counter()
    results = engine.generate(reqs)
    _sync()
    seconds = time.perf_counter() - t0
    tokens = sum(r.num_response_tokens for r in results)
    layers = fp8_layers(engine.model)
    engine.close()
    out = {"batch": batch, "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}
    if fp8:
        out["paths"] = sorted({m.path for m in layers.values()})
        out["fallbacks"] = sorted({m.fallback for m in layers.values() if m.fallback})
    return out


def weight_sync(model: CausalLM) -> dict:
    """Bytes and GPU times of one version, bf16 vs FP8. The trainer holds fp32 master
    weights: each tensor is made fp32 (untimed), then cast to bf16 or quantized (timed; one
    tensor at a time, so the 8B shape's 32 GB of fp32 never sit in memory at once). Leaves
    the model's projections FP8."""
    device = str(next(model.parameters()).device)
    engine = TorchEngine(model, EngineConfig(max_batch_size=1, max_seq_len=8, device=device,
                                             dtype="bfloat16", decode="eager"))
    fp8: dict[str, torch.Tensor] = {}
    cast_ms = quantize_ms = 0.0
    bf16_bytes = 0
    for name, t in model.state_dict().items():
        master = t.detach().float()
        cast, ms = _timed(lambda m=master: m.to(torch.bfloat16))
        cast_ms, bf16_bytes = cast_ms + ms, bf16_bytes + tensor_bytes({name: cast})
        del cast
        part, ms = _timed(lambda n=name, m=master: quantize_state({n: m}))
        quantize_ms += ms
        fp8 |= part
        del master
    bf16 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _, bf16_load_ms = _timed(lambda: engine.load_weights(bf16, 1))
    bf16.clear()
    engine.use_fp8()
    loads = [_timed(lambda v=v: engine.load_weights(fp8, v))[1] for v in (2, 3, 4)]
    engine.close()
    return {"bf16_bytes": bf16_bytes, "fp8_bytes": tensor_bytes(fp8), "cast_ms": cast_ms,
            "quantize_ms": quantize_ms, "bf16_load_ms": bf16_load_ms, "fp8_load_ms": min(loads)}


def _timed(fn):
    _sync()
    t0 = time.perf_counter()
    value = fn()
    _sync()
    return value, (time.perf_counter() - t0) * 1e3


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(out_dir: Path, quick: bool, device: str = "cuda", only: list[str] | None = None
        ) -> Path:
    """Measure every shape (`quick`: one small one; on device "cpu" a smoke shape that only
    checks the script) and write `fp8_rollout.json` into `out_dir`."""
    shapes = SMOKE if device == "cpu" else QUICK if quick else SHAPES
    new = 4 if device == "cpu" else 32 if quick else NEW
    card = torch.cuda.get_device_name() if device != "cpu" else "none (CPU smoke)"
    info = machine_info() | {"card": card, "torch": torch.__version__}
    result: dict = {"info": info, "prompt": PROMPT, "new": new, "shapes": {}}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "fp8_rollout.json"
    if path.exists() and only:  # a second call for another shape adds to the first's
        result["shapes"] = {k: v for k, v in json.loads(path.read_text())["shapes"].items()
                            if k not in only}
    for name, (shape, batches) in shapes.items():
        if only and name not in only:
            continue
        model = build(shape, device)
        rows = []
        sync = weight_sync(model)  # leaves the model FP8: a fresh one for the throughput
        del model
        _free()
        model = build(shape, device)
        for variant, decode, fp8 in VARIANTS:  # bf16 first: use_fp8 is one way
            for batch in batches:
                try:
                    row = throughput(model, batch, decode, fp8, new)
                except Exception as e:  # an OOM or a refusal: record it, keep the others
                    row = {"batch": batch, "error": f"{type(e).__name__}: {e}"[:300]}
                row["variant"] = variant
                print(name, json.dumps(row), flush=True)
                rows.append(row)
                _free()
        result["shapes"][name] = {"rows": rows, "weight_sync": sync}
        print(name, json.dumps(sync), flush=True)
        path.write_text(json.dumps(result, indent=2) + "\n")  # a cut run keeps what it has
        del model
        _free()
    return path


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def record(path: Path) -> None:
    data = json.loads(path.read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fp8_rollout.json").write_text(json.dumps(data, indent=2) + "\n")
    info = data["info"]
    lines = [f"{info['date']} · {info['card']} · torch {info['torch']} · "
             f"{data['prompt']}-token prompts, {data['new']} new tokens, temperature 1, "
             "random-init bf16 weights (`bench/fp8_rollout.py`)", "",
             "| shape | batch | bf16 fused tok/s | bf16 eager tok/s | fp8 fused tok/s | "
             "fp8 eager tok/s | fp8 / bf16 (fused) | fp8 / bf16 (eager) | fp8 GEMM path |",
             "|---|---|---|---|---|---|---|---|---|"]
    goal = None
    for name, shape in data["shapes"].items():
        by = {(r["variant"], r["batch"]): r for r in shape["rows"]}
        for batch in sorted({r["batch"] for r in shape["rows"]}):
            f, e, qf, qe = (by.get((v, batch), {}) for v, _, _ in VARIANTS)
            cells = [f"{r['tok_s']:,.0f}" if "tok_s" in r else r.get("error", "")[:60]
                     for r in (f, e, qf, qe)]
            ratio_f = qf["tok_s"] / f["tok_s"] if "tok_s" in qf and "tok_s" in f else None
            ratio_e = qe["tok_s"] / e["tok_s"] if "tok_s" in qe and "tok_s" in e else None
            if name == "8B" and ratio_f is not None:
                goal = min(goal or ratio_f, ratio_f)
            q = qf or qe
            path_note = ", ".join(q.get("paths", [])) + (
                f" (fallback: {q['fallbacks'][0][:60]})" if q.get("fallbacks") else "")
            lines.append(f"| {name} | {batch} | {' | '.join(cells)} | "
                         f"{'' if ratio_f is None else f'{ratio_f:.2f}x'} | "
                         f"{'' if ratio_e is None else f'{ratio_e:.2f}x'} | {path_note} |")
    lines += ["", "Weight sync per version (GPU; from the trainer's fp32 master weights):", "",
              "| shape | bf16 bytes | fp8 bytes (+ scales) | ratio | bf16 cast | fp8 quantize "
              "| engine load bf16 | engine load fp8 |", "|---|---|---|---|---|---|---|---|"]
    for name, shape in data["shapes"].items():
        s = shape["weight_sync"]
        lines.append(f"| {name} | {s['bf16_bytes'] / 1e9:.2f} GB | {s['fp8_bytes'] / 1e9:.2f} GB"
                     f" | {s['fp8_bytes'] / s['bf16_bytes']:.2f} | {s['cast_ms']:.1f} ms | "
                     f"{s['quantize_ms']:.1f} ms | {s['bf16_load_ms']:.1f} ms"
                     f" | {s['fp8_load_ms']:.1f} ms |")
    if goal is not None:
        lines += ["", f"Goal FP8 ≥ 1.3x BF16 (fused vs fused, the default engines) at the 8B "
                      f"shape: {'met' if goal >= 1.3 else '**missed**'} ({goal:.2f}x at worst)."]
    replace_section("fp8_rollout", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--record", type=Path, help="only write BENCHMARKS.md from this JSON")
    p.add_argument("--quick", action="store_true", help="a 4-layer shape, batch 32, 32 tokens")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="default: every shape")
    args = p.parse_args()
    if args.record:
        return record(args.record)
    if not torch.cuda.is_available():
        print("fp8_rollout needs a CUDA GPU (FP8 GEMMs need Hopper); skipped")
        return None
    path = run(args.out, args.quick, only=args.shapes)
    print(f"wrote {path}")
    return None


if __name__ == "__main__":
    main()
