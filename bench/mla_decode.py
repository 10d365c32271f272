"""One multi-head latent attention layer's decode step over the latent cache: kv_b_proj absorbed
into q and o (what the engine runs) against up-projecting every cached latent (what training
does), and the cache bytes per token against full per-head k/v.

    python bench/mla_decode.py                 # CPU, ~1 min: 16 heads, hidden 1024
    python bench/mla_decode.py --device cuda   # GPU, bf16, DeepSeek-V3's layer shapes, ~1 min

Writes the `mla_decode` section of BENCHMARKS.md. The layer is random-init streamrl
`MLAttention` on a static `KVCache` whose latent rows are random; each timed step decodes one
token at position `context` for every row (median of `--reps` steps, after one warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, replace_section
from streamrl.models import KVCache, ModelConfig
from streamrl.models.layers import RotaryEmbedding
from streamrl.models.mla import MLAttention

DEEPSEEK_V3 = dict(hidden_size=7168, num_attention_heads=128, q_lora_rank=1536)
SMALL = dict(hidden_size=1024, num_attention_heads=16, q_lora_rank=384)


def layer_config(shape: dict) -> ModelConfig:
    return ModelConfig.from_hf_dict(dict(
        model_type="deepseek_v3", vocab_size=1000, intermediate_size=2048,
        moe_intermediate_size=256, num_hidden_layers=1, num_key_value_heads=1, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=8, n_group=1,
        topk_group=1, num_experts_per_tok=2, first_k_dense_replace=1,
        max_position_embeddings=1 << 17, **shape))


def step_ms(attn: MLAttention, cache: KVCache, rot: RotaryEmbedding, batch: int, context: int,
            reps: int, absorb: bool) -> float:
    attn.use_absorption = absorb
    device, dtype = cache.k.device, cache.k.dtype
    times = []
    for _ in range(reps + 1):
        positions = torch.full((batch, 1), context, device=device)
        x = torch.randn(batch, 1, attn.o_proj.out_features, device=device, dtype=dtype)
        cos, sin = rot(positions, dtype)
        step = cache.step(positions, None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        attn(x, cos, sin, step.attention_mask(), step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    shape, dtype = (DEEPSEEK_V3, torch.bfloat16) if cuda else (SMALL, torch.float32)
    batch, contexts = (8, (1024, 4096, 16384)) if cuda else (4, (256, 1024))
    if not cuda:
        torch.set_num_threads(1)  # steadier on a shared CPU; the ratio is what matters here
    config = layer_config(shape)
    torch.manual_seed(0)
    attn = MLAttention(config, 0).to(args.device, dtype).eval()
    rot = RotaryEmbedding(config.qk_rope_head_dim, config.rope_theta, config.rope_scaling)
    elem = torch.empty((), dtype=dtype).element_size()
    latent_bytes = KVCache.bytes_per_block(config, 1, dtype)
    full_bytes = config.num_attention_heads * (
        config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim) * elem
    rows = []
    with torch.inference_mode():
        for context in contexts:
            cache = KVCache.for_model(config, num_slots=batch, max_seq_len=context + 1,
                                      dtype=dtype, device=args.device)
            cache.k.normal_()  # latent rows of `context` earlier tokens (values do not matter)
            absorbed = step_ms(attn, cache, rot, batch, context, args.reps, absorb=True)
            expanded = step_ms(attn, cache, rot, batch, context, args.reps, absorb=False)
            rows.append(f"| {context:,} | {batch} | {absorbed:,.2f} | {expanded:,.2f} | "
                        f"{expanded / absorbed:.1f}x |")
            print(rows[-1], flush=True)
            del cache
    info = machine_info()
    card = torch.cuda.get_device_name() if cuda else info["card"]
    heads, hidden = shape["num_attention_heads"], shape["hidden_size"]
    body = "\n".join([
        f"`python bench/mla_decode.py{' --device cuda' if cuda else ''}`, {info['date']}, "
        f"{info['machine']}; card: {card}; {str(dtype).removeprefix('torch.')}"
        f"{'' if cuda else ', one thread (a shared CPU: absolute times are noisy)'}.",
        "",
        f"One MLA layer ({heads} heads, hidden {hidden}, kv_lora_rank 512, rope 64, nope 128, "
        "v 128), one decode step for every row, median ms. The latent cache holds "
        f"{latent_bytes:,} B per token and layer against {full_bytes:,} B for full per-head "
        f"k/v ({full_bytes / latent_bytes:.0f}x).",
        "",
        "| cached tokens | rows | absorbed (engine) | up-projected (training's way) | ratio |",
        "|---|---|---|---|---|",
        *rows,
    ])
    replace_section("mla_decode", body)


if __name__ == "__main__":
    main()
