"""Colocated weight sync: trainer and engine processes on one GPU, versions over cuda_ipc.

    python -m bench.weight_sync --out /tmp/sync               # on the GPU: measures, writes JSON
    python -m bench.weight_sync --record /tmp/sync/weight_sync.json   # BENCHMARKS.md + PNG

The trainer process holds the Qwen3-0.6B shape in fp32 (master weights, as the learner does);
each version it nudges every parameter, publishes the HF-named state through `CudaIpcTransport`
(snapshot into one shared buffer + the canonical digest) and sends the announcement to the
engine process, which holds the same model in bf16. The engine loads the version (opens the IPC
handle, views the buffer) and copies it into its parameters with the engine's own
`copy_hf_weights`; per version it reports that time, the same copy with one `_foreach_copy_`,
and the digest check. Baseline, measured in the engine process in the same run: one
device-to-device copy of the engine's bf16 bytes (the floor for refreshing its weights) and of
the published fp32 bytes. Goal: load ≤ 2× the floor.

Correctness per version: the engine's logprobs of a fixed 256-token sequence against the
trainer's (bf16 autocast over its fp32 weights, the learner's path). The tolerance is bf16's
own noise, measured: twice the largest gap between the trainer's bf16 and fp32 logprobs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, ROOT, machine_info
from bench.trainer_mfu import _write_section, model_config
from streamrl.models import CausalLM, fused_token_logprobs

SEQ = 256


def fixed_sequence(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (1, SEQ + 1), generator=g)
    return tokens[:, :-1].cuda(), torch.arange(SEQ)[None].cuda(), tokens[:, 1:].cuda()


def trainer_logprobs(model: CausalLM, dtype: torch.dtype | None) -> torch.Tensor:
    tokens, positions, targets = fixed_sequence(model.config.vocab_size)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is not None):
        hidden = model(tokens, positions, return_hidden=True).hidden
        return fused_token_logprobs(hidden, model.lm_head.weight, targets)[0].cpu()


def _median_ms(fn, repeat: int = 10) -> float:
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def _copy_floor_ms(nbytes: int) -> float:
    """One device-to-device copy of `nbytes` (random bytes, not zeros)."""
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return _median_ms(lambda: dst.copy_(src))


def engine(conn, quick: bool, directory: str) -> None:
    from producers.engine.weights import copy_hf_weights
    from streamrl.weights import open_transport, weights_digest

    torch.manual_seed(0)
    model = CausalLM(model_config("0.6B", quick)).to("cuda", torch.bfloat16).eval()
    params = list(model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in params)
    conn.send({"floor_bf16_ms": _copy_floor_ms(nbytes), "floor_fp32_ms": _copy_floor_ms(
        2 * nbytes), "engine_bytes": nbytes})
    with open_transport("cuda_ipc", directory=directory) as transport:
        while (msg := conn.recv()) is not None:
            locator, digest = msg
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            tensors = transport.load(locator)  # open the IPC handle, view the buffer
            with torch.inference_mode():
                copy_hf_weights(model, tensors)  # the engine's own load path
            torch.cuda.synchronize()
            load_ms = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            transport.load(locator, expected_digest=digest)  # raises on a mismatch
            verify_ms = (time.perf_counter() - t0) * 1e3
            names = [n for n, _ in model.named_parameters()]
            src = [tensors[n] for n in names]

            def foreach(src=src) -> None:
                with torch.no_grad():
                    torch._foreach_copy_(params, src)

            foreach_ms = _median_ms(foreach, repeat=5)
            ok = weights_digest({k: v.cpu() for k, v in tensors.items()}) == digest
            del tensors, src
            tokens, positions, targets = fixed_sequence(model.config.vocab_size)
            with torch.inference_mode():
                logits = model(tokens, positions).logits.float()
                lp = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0].cpu()
            conn.send({"load_ms": load_ms, "foreach_ms": foreach_ms, "digest_ms": verify_ms,
                       "digest_ok": ok, "logprobs": lp.tolist()})


def run(out: Path, quick: bool, num_versions: int) -> Path:
    ctx = mp.get_context("spawn")
    directory = "/dev/shm"
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=engine, args=(child, quick, directory), daemon=True)
    proc.start()
    torch.manual_seed(0)
    model = CausalLM(model_config("0.6B", quick)).to("cuda").eval()
    with torch.no_grad():  # HF's init scale (initializer_range 0.02): realistic logprobs
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    floors = parent.recv()
    from consumers.trainer.compute import full_tensor
    from streamrl.models.checkpoint import to_hf_names
    from streamrl.weights import open_transport

    versions = []
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    with open_transport("cuda_ipc", namespace=namespace, directory=directory) as transport:
        for v in range(1, num_versions + 2):  # version 1 warms up
            with torch.no_grad():
                params = list(model.parameters())
                torch._foreach_add_(params, [torch.randn_like(p) * 1e-3 for p in params])
            state = to_hf_names({k: full_tensor(t) for k, t in model.state_dict().items()},
                                model.config)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            published = transport.publish(v, state)
            publish_ms = (time.perf_counter() - t0) * 1e3
            parent.send((published.locator, published.digest))
            got = parent.recv()
            lp_bf16, lp_fp32 = trainer_logprobs(model, torch.bfloat16), trainer_logprobs(
                model, None)
            eng = torch.tensor(got.pop("logprobs"))
            got |= {"version": v, "publish_ms": publish_ms, "num_bytes": published.num_bytes,
                    "engine_vs_trainer_max": float((eng - lp_bf16).abs().max()),
                    "engine_vs_trainer_mean": float((eng - lp_bf16).abs().mean()),
                    "bf16_noise_max": float((lp_bf16 - lp_fp32).abs().max()),
                    "trainer_logprob_mean": float(lp_bf16.mean())}
            print(json.dumps(got), flush=True)
            versions.append(got)
    parent.send(None)
    proc.join(timeout=60)
    info = machine_info() | {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "weight_sync.json"
    path.write_text(json.dumps({"info": info, **floors, "versions": versions[1:]}, indent=2))
    return path


def record(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = json.loads(path.read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weight_sync.json").write_text(json.dumps(d, indent=2) + "\n")
    vs, floor = d["versions"], d["floor_bf16_ms"]
    med = {k: float(np.median([v[k] for v in vs]))
           for k in ("load_ms", "foreach_ms", "digest_ms", "publish_ms")}
    fig, ax = plt.subplots(figsize=(8, 4))
    x = [v["version"] for v in vs]
    for key, label in (("load_ms", "engine load (copy_hf_weights)"),
                       ("foreach_ms", "engine load (one _foreach_copy_)")):
        ax.plot(x, [v[key] for v in vs], marker="o", label=label)
    ax.axhline(floor, color="black", linestyle=":", label="floor: D2D copy of bf16 bytes")
    ax.set_yscale("log")
    ax.axhline(2 * floor, color="black", linestyle="--", label="goal: 2× floor")
    ax.set_xlabel("version")
    ax.set_ylabel("ms")
    ax.legend()
    fig.tight_layout()
    png = RESULTS / "weight_sync.png"
    fig.savefig(png, dpi=110)
    ok = all(v["digest_ok"] for v in vs)

    def verdict(ms: float) -> str:
        return "met" if ms <= 2 * floor else "**missed**"

    within = sum(v["engine_vs_trainer_max"] <= 2 * v["bf16_noise_max"] for v in vs)
    worst = max(v["engine_vs_trainer_max"] for v in vs)
    mean_gap = float(np.mean([v["engine_vs_trainer_mean"] for v in vs]))
    scale = float(np.mean([abs(v["trainer_logprob_mean"]) for v in vs]))
    info = d["info"]
    lines = ["<!-- weight_sync:start -->", "## weight_sync", "",
             f"{info['date']} · {info['card']} · torch {info['torch']} · Qwen3-0.6B shape, "
             f"trainer fp32 → engine bf16 ({d['engine_bytes'] / 1e9:.2f} GB), cuda_ipc, "
             f"{len(vs)} versions, medians", "",
             "| what | ms | × floor (bf16 bytes, "
             f"{floor:.2f} ms) | goal |", "|---|---|---|---|",
             f"| engine load: open IPC handle + copy_hf_weights (one multi-tensor copy) "
             f"| {med['load_ms']:.2f} | "
             f"{med['load_ms'] / floor:.2f}× | ≤ 2× {verdict(med['load_ms'])} |",
             f"| engine load: one _foreach_copy_ | {med['foreach_ms']:.2f} | "
             f"{med['foreach_ms'] / floor:.2f}× | ≤ 2× {verdict(med['foreach_ms'])} |",
             f"| floor for the published fp32 bytes | {d['floor_fp32_ms']:.2f} | "
             f"{d['floor_fp32_ms'] / floor:.2f}× | |",
             f"| trainer publish (snapshot + sha256 digest) | {med['publish_ms']:.1f} | "
             f"{med['publish_ms'] / floor:.1f}× | |",
             f"| digest check of a loaded version (D2H + sha256) | {med['digest_ms']:.1f} | "
             f"{med['digest_ms'] / floor:.1f}× | |", "",
             f"Digests verified on every version: {ok}. Engine bf16 logprobs vs the trainer's "
             f"(fixed {SEQ}-token sequence, mean |logprob| {scale:.3g} nats): mean gap "
             f"{mean_gap:.3g}, worst max-abs gap {worst:.3g} nats; within the tolerance (2× "
             f"the trainer's own bf16-vs-fp32 max gap, per version) on {within} of {len(vs)} "
             "versions.", "",
             f"![weight_sync]({png.relative_to(ROOT)})", "<!-- weight_sync:end -->"]
    _write_section("weight_sync", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/weight_sync"))
    p.add_argument("--record", type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--versions", type=int, default=5)
    args = p.parse_args()
    if args.record:
        record(args.record)
        return
    print(run(args.out, args.quick, args.versions))


if __name__ == "__main__":
    main()
