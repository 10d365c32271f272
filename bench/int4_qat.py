"""INT4 QAT: bytes per weight version as int4 (packed + fp32 group scales) against fp32 and
bf16, measured on real-shape decoder layers; quantize-and-pack time per layer on this machine;
with a GPU, the W4A16 Triton matmul against a bf16 matmul at decode and prefill shapes.

    python bench/int4_qat.py             # CPU, ~1 min, ~6 GiB; writes BENCHMARKS.md (int4_qat)
    python bench/int4_qat.py --gpu       # adds the W4A16 kernel timings (CUDA, ~1 min)

Bytes are measured, not computed: one decoder layer of each shape is built (random weights,
the real tensor shapes), turned into a version's HF tensors and through `int4_payload`, and the
bytes of the resulting tensors are summed; a version is that times the number of layers plus
the tensors outside the layers (embedding, final norm, LM head), which stay as published.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import RESULTS, machine_info, replace_section
from streamrl.models import CausalLM, ModelConfig
from streamrl.models.checkpoint import to_hf_names
from streamrl.models.quant import Int4Spec, int4_payload

NAME = "int4_qat"
SHAPES = {
    "Qwen3-0.6B": (dict(model_type="qwen3", vocab_size=151936, hidden_size=1024,
                        intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
                   "linear"),
    "Qwen3-8B": (dict(model_type="qwen3", vocab_size=151936, hidden_size=4096,
                      intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128), "linear"),
    "Qwen3-30B-A3B": (dict(model_type="qwen3_moe", vocab_size=151936, hidden_size=2048,
                           intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                           num_experts_per_tok=8, num_hidden_layers=48, num_attention_heads=32,
                           num_key_value_heads=4, head_dim=128), "experts"),
}
GROUP = 128


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def measure(name: str) -> dict[str, float]:
    shape, targets = SHAPES[name]
    layers = shape["num_hidden_layers"]
    one = ModelConfig(**{**shape, "num_hidden_layers": 1, "vocab_size": 8,
                         "max_position_embeddings": 4096})
    with torch.device("meta"):
        skeleton = CausalLM(one)
    state = {k: torch.randn(v.shape) * 0.02 for k, v in skeleton.state_dict().items()
             if k.startswith("model.layers.")}
    hf = to_hf_names(state, one)
    started = time.perf_counter()
    payload = int4_payload(hf, Int4Spec(group_size=GROUP, targets=targets))
    quant_s = time.perf_counter() - started
    vocab, hidden = shape["vocab_size"], shape["hidden_size"]
    heads = 1 if shape.get("tie_word_embeddings") else 2
    outside = (heads * vocab * hidden + hidden) * 4  # embedding (+ untied LM head) + final norm
    fp32_layer = nbytes(hf)
    targeted = [n for n in hf if n + ".qweight" in payload]
    int4_layer = nbytes(payload)
    result = {
        "targets": targets,
        "fp32_gb": (layers * fp32_layer + outside) / 1e9,
        "bf16_gb": (layers * fp32_layer + outside) / 2 / 1e9,
        "int4_gb": (layers * int4_layer + outside / 2) / 1e9,  # the rest published as bf16
        "targeted_fraction": nbytes({n: hf[n] for n in targeted}) / fp32_layer,
        "targeted_bits_per_weight": 8 * sum(payload[n + s].numel() * payload[n + s].element_size()
                                            for n in targeted for s in (".qweight", ".scales"))
        / sum(hf[n].numel() for n in targeted),
        "quantize_s_per_layer": quant_s,
    }
    return result


def gpu_kernel() -> list[dict[str, float]]:
    from streamrl.models.int4_kernel import w4a16_matmul
    from streamrl.models.quant import pack_int4, quantize_int4

    out = []
    for n, k in ((4096, 4096), (12288, 4096), (4096, 12288)):  # Qwen3-8B qkv-ish, up, down
        q, s = quantize_int4(torch.randn(n, k), GROUP)
        qweight, scales = pack_int4(q).cuda(), s.cuda()
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for m in (1, 64, 256, 2048):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"m": m, "n": n, "k": k}
            for label, fn in (("bf16_us", lambda x=x, w=w: x @ w.T),
                              ("w4a16_us", lambda x=x, q=qweight, s=scales:
                               w4a16_matmul(x, q, s, GROUP))):
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(True), torch.cuda.Event(True)
                start.record()
                for _ in range(20):
                    fn()
                end.record()
                torch.cuda.synchronize()
                row[label] = start.elapsed_time(end) / 20 * 1e3
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="also time the W4A16 kernel (CUDA)")
    args = parser.parse_args()
    torch.manual_seed(0)
    info = machine_info()
    results = {name: measure(name) for name in SHAPES}
    lines = [f"{info['date']}, {info['machine']}. `python bench/int4_qat.py`. Group size "
             f"{GROUP}, symmetric int4 + one fp32 scale per group; bytes of one weight version "
             "as published, measured on one real-shape decoder layer times the layer count, "
             "plus embedding, LM head and final norm (fp32, or bf16 beside int4). The quantize "
             "time is this CPU's (the trainer quantizes nothing: the engine quantizes on load, "
             "on its GPU in a real run, or the version travels as `int4_payload`).", "",
             "| shape | int4 targets | fp32 GB | bf16 GB | int4 GB | int4 / bf16 | targeted "
             "share of a layer's bytes | bits per targeted weight | quantize+pack s / layer "
             "(CPU) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['targets']} | {r['fp32_gb']:.2f} | {r['bf16_gb']:.2f} | "
                     f"{r['int4_gb']:.2f} | {r['int4_gb'] / r['bf16_gb']:.2f} | "
                     f"{r['targeted_fraction']:.1%} | {r['targeted_bits_per_weight']:.2f} | "
                     f"{r['quantize_s_per_layer']:.2f} |")
    kernel = gpu_kernel() if args.gpu and torch.cuda.is_available() else []
    if kernel:
        name = torch.cuda.get_device_name()
        lines += ["", f"W4A16 Triton matmul vs bf16 `x @ w.T` on {name} (mean of 20, us):", "",
                  "| M | N | K | bf16 | w4a16 | w4a16 / bf16 |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['m']} | {r['n']} | {r['k']} | {r['bf16_us']:.1f} | "
                  f"{r['w4a16_us']:.1f} | {r['w4a16_us'] / r['bf16_us']:.2f} |" for r in kernel]
    else:
        lines += ["", "W4A16 kernel timings: not run here (no GPU); `--gpu` on the H100."]
    lines += ["", "The engine serves the targeted weights as W4A16 and the INT4 QAT trainer "
              "computes with the same quantized values: engine and trainer logprobs agree "
              "within 1e-6 on CPU fp32 (tests/models/test_int4.py)."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps({"info": info, "bytes": results,
                                                      "kernel": kernel}, indent=2))
    replace_section(NAME, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
