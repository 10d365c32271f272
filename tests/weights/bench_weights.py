"""Publish/load throughput of the weight transports for a ~100 MB state dict.

    .venv/bin/python tests/weights/bench_weights.py [--mb 100] [--repeat 5]

Prints the median of `--repeat` runs per step; timings are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

import torch

from streamrl.weights import open_transport, weights_digest


def state_dict(total_mb: int) -> dict[str, torch.Tensor]:
    """Qwen-like mix: bf16 matrices, fp32 norms, a tied fp32 embedding, an int64 buffer."""
    hidden, vocab = 1024, 4096
    sd = {"embed.weight": torch.randn(vocab, hidden)}  # 16 MiB
    sd["lm_head.weight"] = sd["embed.weight"]
    sd["rotary.position_ids"] = torch.arange(4096)
    layer_bytes = 2 * (4 * hidden * hidden + 3 * hidden * 2816)
    for i in range(max(1, (total_mb * 2**20 - 16 * 2**20) // layer_bytes)):
        p = f"layers.{i}."
        sd[p + "attn.qkv.weight"] = torch.randn(3 * hidden, hidden, dtype=torch.bfloat16)
        sd[p + "attn.o.weight"] = torch.randn(hidden, hidden, dtype=torch.bfloat16)
        sd[p + "mlp.up_gate.weight"] = torch.randn(2 * 2816, hidden, dtype=torch.bfloat16)
        sd[p + "mlp.down.weight"] = torch.randn(hidden, 2816, dtype=torch.bfloat16)
        sd[p + "norm.weight"] = torch.ones(hidden)
    return sd


def median_s(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(kind: str, options: dict, sd: dict[str, torch.Tensor], repeat: int
          ) -> dict[str, float]:
    """Seconds per step (median) for one transport."""
    params = {name: torch.empty_like(t) for name, t in sd.items()}  # a producer's model

    def into_params(tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            params[name].copy_(t)

    with open_transport(kind, keep_last=2, **options) as t:
        versions = iter(range(10**6))
        times = {"publish (write+digest)": median_s(lambda: t.publish(next(versions), sd), repeat)}
        p = t.retained[-1]
        times["load (copy)"] = median_s(lambda: t.load(p.locator), repeat)
        times["load (copy) + verify"] = median_s(
            lambda: t.load(p.locator, expected_digest=p.digest), repeat)
        times["load (zero-copy)"] = median_s(lambda: t.load(p.locator, zero_copy=True), repeat)
        times["zero-copy -> params"] = median_s(
            lambda: into_params(t.load(p.locator, zero_copy=True)), repeat)
        times["copy -> params"] = median_s(lambda: into_params(t.load(p.locator)), repeat)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sd = state_dict(args.mb)
    num_bytes = sum(t.numel() * t.element_size() for n, t in sd.items() if n != "lm_head.weight")
    mb = num_bytes / 1e6
    print(f"{len(sd)} tensors, {mb:.1f} MB, {len(os.sched_getaffinity(0))} cores, "
          f"torch threads {torch.get_num_threads()}")
    digest_s = median_s(lambda: weights_digest(sd), args.repeat)
    print(f"  weights_digest               {mb / digest_s:7.0f} MB/s  ({digest_s * 1e3:6.1f} ms)")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, options in (("shm", {"namespace": f"bench-{uuid.uuid4().hex[:8]}"}),
                              ("file", {"directory": tmp})):
            for step, s in bench(kind, options, sd, args.repeat).items():
                print(f"  {kind:4} {step:23} {mb / s:7.0f} MB/s  ({s * 1e3:6.1f} ms)")


if __name__ == "__main__":
    main()
