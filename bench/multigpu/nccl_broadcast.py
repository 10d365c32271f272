"""Weight broadcast over the process-group transport vs NCCL all-reduce bus bandwidth, same GPUs,
same run.

    python -m bench.multigpu.nccl_broadcast --gpus 8 --gb 4 --out /tmp/bcast     # multi-GPU host
    python -m bench.multigpu.nccl_broadcast --record /tmp/bcast/nccl_broadcast.json
    python -m bench.multigpu.nccl_broadcast --smoke --out /tmp/bcast    # CPU, gloo, 3 processes

Rank 0 (the trainer) holds a bf16 model-shaped state of `--gb` GB (Qwen3-like layers: q/k/v/o,
gate/up/down, norms) and publishes it `--versions` times through `BroadcastTransport` to the other
ranks (the engines), which receive it on their side stream. Ours: bytes / time of the transport's
send path (manifest, status, buckets, digest trailer; the canonical digest is hashed on a host
thread meanwhile and reported apart, `publish_s`). Baseline, in the same process group: NCCL
all-reduce of one buffer of the same size, bus bandwidth as nccl-tests defines it (algbw x
2(n-1)/n). A broadcast's bus bandwidth is its algorithm bandwidth, so the ratio compares like
with like. Goal: ours >= 80% of the all-reduce bus bandwidth.

Every process keeps NVLink multicast off (NCCL_NVLS_ENABLE=0, ...). The smoke mode runs the same
code over gloo on CPU with a few MB: its figures only show the code runs, they are not the goal.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import time
from pathlib import Path

import torch

from bench.common import ROOT, machine_info
from streamrl.launch.disaggregated import NVLINK_MULTICAST_OFF

HIDDEN, FFN, KV = 2048, 6144, 512  # a Qwen3-1.7B-like layer


def model_state(num_bytes: int, device: torch.device) -> dict[str, torch.Tensor]:
    """bf16 tensors in transformer-layer shapes, layers added until `num_bytes` is reached."""
    shapes = {"q": (HIDDEN, HIDDEN), "k": (KV, HIDDEN), "v": (KV, HIDDEN), "o": (HIDDEN, HIDDEN),
              "gate": (FFN, HIDDEN), "up": (FFN, HIDDEN), "down": (HIDDEN, FFN), "norm": (HIDDEN,)}
    layer_bytes = sum(2 * torch.Size(s).numel() for s in shapes.values())
    scale = 1 if num_bytes >= layer_bytes else max(1, layer_bytes // num_bytes)
    out, total, i = {}, 0, 0
    while total < num_bytes:
        for name, shape in shapes.items():
            shape = tuple(max(1, d // scale) for d in shape)  # smoke: shrink the layer
            out[f"layers.{i}.{name}"] = torch.randn(shape, device=device).to(torch.bfloat16)
            total += 2 * torch.Size(shape).numel()
        i += 1
    return out


def rank_main(rank: int, world: int, addresses: tuple[str, str], backend: str, num_bytes: int,
              versions: int, bucket_mb: int, out: str) -> None:
    os.environ.update(NVLINK_MULTICAST_OFF)
    import concurrent.futures

    from streamrl.weights.broadcast import BroadcastTransport, GroupConfig, open_group
    from streamrl.weights.buckets import Manifest

    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    state = model_state(num_bytes, device) if rank == 0 else None
    # Baseline first, on a group of its own over the same ranks: all-reduce bus bandwidth of the
    # same bytes (bf16), after a warm-up round.
    base = open_group(GroupConfig(address=addresses[1], world_size=world, rank=rank,
                                  backend=backend, group_name="baseline", timeout_s=600))
    sizes = torch.tensor([sum(x.numel() * 2 for x in state.values()) if state else 0],
                         device=device)
    base.broadcast(sizes, 0).wait()
    size = int(sizes.item())
    buf = torch.ones(size // 2, dtype=torch.bfloat16, device=device)
    allreduce_s = []
    for i in range(versions + 1):
        _sync(device)
        t0 = time.perf_counter()
        base.allreduce([buf]).wait()
        _sync(device)
        if i:
            allreduce_s.append(time.perf_counter() - t0)
    del buf
    group = GroupConfig(address=addresses[0], world_size=world, rank=rank, backend=backend,
                        timeout_s=600)
    t = BroadcastTransport(group, bucket_bytes=bucket_mb << 20, device=str(device), keep_last=1)
    if rank != 0:  # an engine: the receive thread takes every version until the sender closes
        t.start()
        assert t._thread is not None
        t._thread.join()
        if t.error is not None:
            raise t.error
        t.close()
        return
    t.wait_ready(600)
    manifest = Manifest.of(state, bucket_bytes=t.bucket_bytes)
    no_digest: concurrent.futures.Future[str] = concurrent.futures.Future()
    no_digest.set_result("0" * 64)
    send_s, publish_s = [], []
    for v in range(versions + 1):  # the first round warms up the staging buffers
        _sync(device)
        t0 = time.perf_counter()
        t._send(2 * v + 1, manifest, state, no_digest)  # the wire path alone
        t1 = time.perf_counter()
        t.publish(2 * v + 2, state)  # the whole publish, canonical digest included
        t2 = time.perf_counter()
        if v:
            send_s.append(t1 - t0)
            publish_s.append(t2 - t1)
    t.close()
    allreduce_busbw = size / min(allreduce_s) * 2 * (world - 1) / world / 1e9
    ours = size / min(send_s) / 1e9
    result = {"bytes": size, "world_size": world, "backend": backend, "bucket_mb": bucket_mb,
              "send_s": send_s, "publish_s": publish_s, "allreduce_s": allreduce_s,
              "broadcast_gbps": ours, "allreduce_busbw_gbps": allreduce_busbw,
              "ratio": ours / allreduce_busbw,
              "card": torch.cuda.get_device_name() if device.type == "cuda" else "none (CPU)",
              **{k: v for k, v in machine_info().items() if k != "card"}}
    Path(out).write_text(json.dumps(result, indent=2))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def run(out_dir: Path, *, gpus: int, gb: float, versions: int, bucket_mb: int,
        smoke: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    backend, world = ("gloo", 3) if smoke else ("nccl", gpus)
    if not smoke and torch.cuda.device_count() < gpus:
        raise SystemExit(f"--gpus {gpus} but only {torch.cuda.device_count()} GPUs are visible; "
                         "use --smoke on CPU")
    addresses = (free_address(), free_address())
    out = out_dir / "nccl_broadcast.json"
    num_bytes = int(gb * 1e9)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(r, world, addresses, backend, num_bytes, versions,
                                                 bucket_mb, str(out))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"rank process exited with {p.exitcode}")
    result = json.loads(out.read_text())
    result["smoke"] = smoke
    out.write_text(json.dumps(result, indent=2))
    return result


def record(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.trainer_mfu import _write_section

    r = json.loads(path.read_text())
    png = ROOT / "bench" / "results" / "nccl_broadcast.png"
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(["our broadcast", "all-reduce busbw"], [r["broadcast_gbps"], r["allreduce_busbw_gbps"]],
           color=["tab:blue", "tab:gray"])
    ax.set_ylabel("GB/s")
    ax.set_title(f"{r['world_size']} ranks, {r['bytes'] / 1e6:,.1f} MB, {r['card']}"
                 + (" (CPU smoke: not the goal)" if r.get("smoke") else ""), fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    note = ("CPU/gloo smoke run: these figures only show the code runs; the goal is for NCCL "
            "on GPUs." if r.get("smoke") else "")
    section = f"""<!-- nccl_broadcast:start -->
## Weight broadcast (process-group transport) vs all-reduce bus bandwidth

`python -m bench.multigpu.nccl_broadcast` — {r['date']}, {r['card']}, {r['machine']}, backend
{r['backend']}, {r['world_size']} ranks, {r['bytes'] / 1e6:,.1f} MB bf16, buckets of
{r['bucket_mb']} MB. {note}

| | GB/s |
|---|---|
| our broadcast (send path, best of {len(r['send_s'])}) | {r['broadcast_gbps']:.2f} |
| all-reduce bus bandwidth, same group, same bytes | {r['allreduce_busbw_gbps']:.2f} |
| ratio (goal >= 0.80) | {r['ratio']:.2f} |

Whole publish with the canonical digest: {min(r['publish_s']):.2f} s.
![nccl_broadcast](bench/results/nccl_broadcast.png)
<!-- nccl_broadcast:end -->"""
    _write_section("nccl_broadcast", section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/nccl_broadcast"))
    p.add_argument("--record", type=Path, help="write BENCHMARKS.md + PNG from a results JSON")
    p.add_argument("--gpus", type=int, default=2, help="ranks: 1 trainer + (gpus-1) engines")
    p.add_argument("--gb", type=float, default=4.0, help="size of the bf16 state")
    p.add_argument("--versions", type=int, default=5)
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--smoke", action="store_true", help="CPU, gloo, 3 ranks, a few MB")
    args = p.parse_args()
    if args.record:
        record(args.record)
        return
    gb = 0.004 if args.smoke else args.gb
    bucket_mb = 1 if args.smoke else args.bucket_mb
    versions = 2 if args.smoke else args.versions
    print(json.dumps(run(args.out, gpus=args.gpus, gb=gb, versions=versions,
                         bucket_mb=bucket_mb, smoke=args.smoke), indent=2))


if __name__ == "__main__":
    main()
