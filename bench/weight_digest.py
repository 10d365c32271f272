"""The weight digest on or off the trainer's critical path: time per version of a trainer loop.

    python -m bench.weight_digest                                   # CPU: small shape, shm
    python -m bench.weight_digest --device cuda --shape 0.6B        # GPU: cuda_ipc, bf16 slots
    python -m bench.weight_digest --record cpu.json gpu.json      # BENCHMARKS.md section

Each version is one real training step (forward, backward, AdamW) of a `CausalLM`, then the
publish of its weights, the way `consumers/trainer/loop.py` does it:

- `inline`: `transport.publish` (copy + digest) before the next step, the previous behaviour;
- `overlapped`: `transport.begin_publish` (copy only), then the next step runs while
  `finish_publish` (digest, manifest) waits on another thread, as the loop's commit task does;
  the step after waits for it (`settle`) before publishing again.

Both ways run in the same process one after the other, twice each (ABAB), after a warm-up; the
figure is the median time per version, with the publish's critical-path cost and the digest's
own time. The digest is the same `weights_digest` either way, checked against a recomputation.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, machine_info, replace_section
from streamrl.models import CausalLM, ModelConfig
from streamrl.weights import open_transport, weights_digest

# A CPU shape whose publish is visible next to its step: 7.6M parameters, 30 MB of fp32.
SMALL = ModelConfig(model_type="qwen3", vocab_size=8192, hidden_size=256, intermediate_size=768,
                    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=64, max_position_embeddings=1024, tie_word_embeddings=False)


def build(shape: str, device: str) -> CausalLM:
    if shape == "small":
        config = SMALL
    else:
        from bench.trainer_mfu import model_config
        config = model_config(shape, False)
    torch.manual_seed(0)
    return CausalLM(config).to(device)


def measure(shape: str, device: str, dtype: str | None, num_versions: int, batch: int,
            seq: int) -> dict:
    model = build(shape, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (batch, seq + 1), device=device)
    positions = torch.arange(seq, device=device)[None].expand(batch, seq)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(tokens[:, :-1], positions).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab),
                                                 tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    def state() -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in model.state_dict().items()}

    kind = "cuda_ipc" if device == "cuda" else "shm"
    options = {"dtype": dtype, "directory": "/dev/shm"} if kind == "cuda_ipc" else {}
    version = 0
    rows: dict[str, list[dict]] = {"inline": [], "overlapped": []}
    with open_transport(kind, namespace=f"bench-{uuid.uuid4().hex[:8]}", **options) as t, \
            concurrent.futures.ThreadPoolExecutor(1) as commits:
        for _ in range(2):  # warm-up: allocator, pinned buffers, first mappings
            step()
            version += 1
            t.publish(version, state())
        for way in ("inline", "overlapped", "inline", "overlapped"):
            commit: concurrent.futures.Future | None = None
            for _ in range(num_versions):
                t0 = time.perf_counter()
                step()
                t1 = time.perf_counter()
                if commit is not None:  # settle: the previous version is committed
                    commit.result()
                t2 = time.perf_counter()
                version += 1
                if way == "inline":
                    published = t.publish(version, state())
                    digest_ms = t.last_timings.get("digest_ms", float("nan")) \
                        if kind == "cuda_ipc" else float("nan")
                else:
                    pending = t.begin_publish(version, state())
                    commit = commits.submit(t.finish_publish, pending)
                t3 = time.perf_counter()
                rows[way].append({"version": version, "step_ms": (t1 - t0) * 1e3,
                                  "settle_ms": (t2 - t1) * 1e3, "publish_ms": (t3 - t2) * 1e3,
                                  "total_ms": (t3 - t0) * 1e3})
                if way == "inline":
                    rows[way][-1]["digest_ms"] = digest_ms
                else:
                    rows[way][-1]["pending"] = pending
            if commit is not None:
                published = commit.result()
                for row in rows[way][-num_versions:]:
                    row["digest_ms"] = row.pop("pending").digest_ms
        assert published.digest == weights_digest(state())  # the last version, recomputed
    num_params = sum(p.numel() for p in model.parameters())
    return {"shape": shape, "device": device, "transport": kind,
            "dtype": (dtype or "float32") if kind == "cuda_ipc" else "float32",
            "load_average": os.getloadavg()[0],
            "num_params": num_params, "batch": batch, "seq": seq,
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "torch_threads": torch.get_num_threads(), "rows": rows}


def summary(d: dict) -> dict[str, dict[str, float]]:
    return {way: {key: float(np.median([r[key] for r in rows]))
                  for key in ("step_ms", "settle_ms", "publish_ms", "digest_ms", "total_ms")}
            for way, rows in d["rows"].items()}


def record(paths: list[Path]) -> None:
    d = {"runs": [run for path in paths for run in json.loads(path.read_text())["runs"]]}
    for run in d["runs"]:
        for rows in run["rows"].values():
            for row in rows:
                row.pop("pending", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weight_digest.json").write_text(json.dumps(d, indent=2) + "\n")
    lines = []
    for run in d["runs"]:
        s = summary(run)
        before, after = s["inline"]["total_ms"], s["overlapped"]["total_ms"]
        lines += [f"{run['date']} · {run.get('card') or run['machine']} · "
                  f"{run['shape']} shape ({run['num_params'] / 1e6:.0f}M parameters, "
                  f"{run['weight_bytes'] / 1e6:.0f} MB fp32), batch {run['batch']} × "
                  f"{run['seq']} tokens, {run['transport']} transport "
                  f"({run['dtype']} published), {run['torch_threads']} torch threads, load "
                  f"average {run.get('load_average', float('nan')):.1f}, medians of "
                  f"{len(run['rows']['inline'])} versions per way", "",
                  "| way | step ms | waiting for the previous digest ms | publish (critical "
                  "path) ms | digest ms | time per version ms |", "|---|---|---|---|---|---|"]
        for way, what in (("inline", "digest inline (`publish`), before"),
                          ("overlapped", "digest overlapped (`begin_publish`), after")):
            r = s[way]
            digest = "within publish" if np.isnan(r["digest_ms"]) else f"{r['digest_ms']:.1f}"
            lines.append(f"| {what} | {r['step_ms']:.1f} | {r['settle_ms']:.1f} | "
                         f"{r['publish_ms']:.1f} | {digest} | {r['total_ms']:.1f} |")
        lines += ["", f"Time per version {before:.1f} → {after:.1f} ms "
                  f"({(before - after) / before:.1%} saved); the publish's share of a version "
                  f"{s['inline']['publish_ms'] / before:.1%} → "
                  f"{(s['overlapped']['publish_ms'] + s['overlapped']['settle_ms']) / after:.1%} "
                  "(copy + waiting for the digest). The digest is computed on another thread "
                  "while the next step runs, so on a machine whose cores the step already uses "
                  "the two compete.", ""]
    replace_section("weight_digest", "\n".join(lines).rstrip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--shape", default=None, help="small (CPU default) or a bench.trainer_mfu "
                   "shape such as 0.6B (GPU default)")
    p.add_argument("--dtype", default="bfloat16", help="cuda_ipc: the published dtype, or none")
    p.add_argument("--versions", type=int, default=6)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("/tmp/weight_digest.json"))
    p.add_argument("--record", type=Path, nargs="+",
                   help="write BENCHMARKS.md from measured JSON files (CPU and GPU runs)")
    args = p.parse_args()
    if args.record:
        record(args.record)
        return
    gpu = args.device == "cuda"
    if not gpu:
        torch.set_num_threads(1)  # as the trainer process runs by default (--threads 1)
    run = measure(args.shape or ("0.6B" if gpu else "small"), args.device,
                  None if args.dtype == "none" else args.dtype, args.versions,
                  args.batch or (8 if gpu else 1), args.seq or (1024 if gpu else 32))
    info = machine_info()
    run |= {"date": info["date"], "machine": info["machine"], "torch": torch.__version__,
            "card": torch.cuda.get_device_name() if gpu else None}
    out = {"runs": [run]}
    if args.out.exists():  # one JSON may hold the CPU and the GPU figures
        old = json.loads(args.out.read_text())
        out["runs"] = [r for r in old["runs"] if r["device"] != run["device"]] + [run]
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(summary(run), indent=2))
    print(args.out)


if __name__ == "__main__":
    main()
