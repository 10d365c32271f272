"""Colocated weight sync: trainer and engine processes on one GPU, versions over cuda_ipc.

    python -m bench.weight_sync --out /tmp/sync               # on the GPU: measures, writes JSON
    python -m bench.weight_sync --record /tmp/sync/weight_sync.json   # BENCHMARKS.md + PNG

The trainer process holds the Qwen3-0.6B shape in fp32 (master weights, as the learner does);
each version it nudges every parameter and publishes the HF-named state through
`CudaIpcTransport`; the engine process holds the same model in bf16 and loads each version with
the engine's own `copy_hf_weights`. The engine's model is packed as `TorchEngine` packs it
(`producers/engine/packing.py`: one buffer laid out like a slot), so a bf16 slot loads as one
copy. Four ways, one after the other in the same run:

- `ring_bf16`: the ring (2 slots, each mapped once by the engine), published cast to bf16;
- `ring_bf16_unpacked`: the same, into an unpacked model of the same weights (the previous
  path: one `_foreach_copy_` over ~310 tensors), the baseline of packing;
- `ring_fp32`: the ring, published as fp32 (the engine casts while copying);
- `reopen_fp32`: the old path, the IPC handle opened (and the views built) on every version.

Engine load = manifest + hold + views + `copy_hf_weights` + `done()` (which waits for the copy),
timed per version; the first load of each slot (which maps it) is reported apart. Baseline,
measured in the engine process in the same run: one device-to-device copy of the engine's bf16
bytes (the floor for refreshing its weights). Goal: load <= 2x the floor. Integrity is timed
apart: the trainer's publish split into slot copy and digests, and the engine's digest check.

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

from bench.common import RESULTS, ROOT, machine_info, replace_section
from bench.trainer_mfu import model_config
from streamrl.models import CausalLM, fused_token_logprobs

SEQ = 256
SLOTS = 2
# mode -> (published dtype, reader maps slots once, engine model packed, engine GPU work
# right before the load)
MODES = {"ring_bf16": ("bfloat16", True, True, False),
         "ring_bf16_busy": ("bfloat16", True, True, True),
         "ring_bf16_unpacked": ("bfloat16", True, False, False),
         "ring_fp32": (None, True, True, False), "reopen_fp32": (None, False, True, False)}


def fixed_sequence(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (1, SEQ + 1), generator=g)
    return tokens[:, :-1].cuda(), torch.arange(SEQ)[None].cuda(), tokens[:, 1:].cuda()


def trainer_logprobs(model: CausalLM, dtype: torch.dtype | None) -> torch.Tensor:
    tokens, positions, targets = fixed_sequence(model.config.vocab_size)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is not None):
        hidden = model(tokens, positions, return_hidden=True).hidden
        return fused_token_logprobs(hidden, model.lm_head.weight, targets)[0].cpu()


def _timed_ms(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def _median_ms(fn, repeat: int = 10) -> float:
    return float(np.median([_timed_ms(fn) for _ in range(repeat)]))


def _copy_floor_ms(nbytes: int) -> float:
    """One device-to-device copy of `nbytes` (random bytes, not zeros)."""
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return _median_ms(lambda: dst.copy_(src))


def engine(conn, quick: bool, directory: str) -> None:
    from streamrl.producers.engine.packing import pack_weights, packed_buffer
    from streamrl.producers.engine.weights import copy_hf_weights
    from streamrl.weights import open_transport

    models = {}
    for packed in (True, False):
        torch.manual_seed(0)
        models[packed] = CausalLM(model_config("0.6B", quick)).to("cuda", torch.bfloat16).eval()
    pack_weights(models[True])  # as TorchEngine does
    names = [n for n, _ in models[True].named_parameters()]
    nbytes = sum(p.numel() * p.element_size() for p in models[True].parameters())
    conn.send({"floor_bf16_ms": _copy_floor_ms(nbytes), "floor_fp32_ms": _copy_floor_ms(
        2 * nbytes), "engine_bytes": nbytes})
    readers = {mode: open_transport("cuda_ipc", directory=directory, map_once=once)
               for mode, (_, once, _, _) in MODES.items()}
    floor_src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device="cuda")
    floor_dst = torch.empty_like(floor_src)
    while (msg := conn.recv()) is not None:
        mode, locator, digest = msg
        t, model = readers[mode], models[MODES[mode][2]]
        params = list(model.parameters())
        got: dict = {}

        def load(t=t, locator=locator, got=got, model=model) -> None:
            t0 = time.perf_counter()
            tensors = t.load(locator)  # manifest, hold, (map,) views
            got["open_ms"] = (time.perf_counter() - t0) * 1e3
            with torch.inference_mode():
                got["copied"] = copy_hf_weights(model, tensors)  # the engine's own load path
            del tensors
            t.done(locator)  # waits for the copy, then lets the publisher reuse the slot

        if MODES[mode][3]:  # a decoding engine ran a step just before: its context is active
            got["busy_ms"] = _timed_ms(lambda: floor_dst[:4096].copy_(floor_src[:4096]))
        load_ms = _timed_ms(load)
        # The same load again at once: the engine's CUDA context is the one on the GPU now (as
        # while it generates), and the slot's pages were just read by it.
        got["load_again_ms"] = _timed_ms(load)

        def verified_load(t=t, locator=locator, digest=digest, got=got, model=model) -> None:
            """The same load with the digest checked off the critical path."""
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            tensors = t.load(locator)
            check = t.verify_later(locator, digest)  # D2H on a side stream + sha256 on a thread
            with torch.inference_mode():
                copy_hf_weights(model, tensors)
            del tensors
            t.done(locator)  # waits for the copy on the current stream only
            got["verified_load_ms"] = (time.perf_counter() - t0) * 1e3
            check.result()  # raises on a mismatch
            got["verified_at_ms"] = (time.perf_counter() - t0) * 1e3

        verified_load()
        tensors = t.load(locator)
        src = [tensors[n] for n in names]

        def foreach(src=src, params=params) -> None:
            with torch.no_grad():
                torch._foreach_copy_(params, src)

        foreach_ms = _median_ms(foreach, repeat=5)

        def engine_copy(tensors=tensors, model=model) -> None:
            with torch.inference_mode():
                copy_hf_weights(model, tensors)

        got["copy_ms"] = _median_ms(engine_copy, repeat=5)
        if MODES[mode][2] and MODES[mode][0] == "bfloat16":  # the same bytes as one raw copy,
            flat = packed_buffer(model)  # no Python plan around it
            slot = torch.empty(0, dtype=torch.uint8, device="cuda").set_(
                next(iter(tensors.values())).untyped_storage(), 0, (flat.numel(),))
            got["raw_copy_ms"] = _median_ms(lambda flat=flat, slot=slot: flat.copy_(slot),
                                            repeat=5)
            del slot
        del tensors, src
        t.done()
        verify_ms = _timed_ms(lambda t=t, loc=locator, d=digest: (
            t.load(loc, expected_digest=d), t.done()))  # raises on a mismatch
        tokens, positions, targets = fixed_sequence(model.config.vocab_size)
        with torch.inference_mode():
            logits = model(tokens, positions).logits.float()
            lp = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0].cpu()
        # The floor after the same idle gap the load saw (the trainer's ~0.3-0.5 s of hashing):
        # the first device work after an idle GPU is slower, whatever it is.
        time.sleep(0.4)
        got["floor_cold_ms"] = _timed_ms(lambda: floor_dst.copy_(floor_src))
        conn.send({"load_ms": load_ms, "foreach_ms": foreach_ms, **got, "digest_ms": verify_ms,
                   "logprobs": lp.tolist()})
    for t in readers.values():
        t.close()


def run(out: Path, quick: bool, num_versions: int) -> Path:
    from streamrl.consumers.trainer.compute import full_tensor
    from streamrl.models.checkpoint import to_hf_names
    from streamrl.weights import open_transport

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
    results: dict[str, list[dict]] = {}
    for mode, (dtype, _, _, _) in MODES.items():
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        with open_transport("cuda_ipc", namespace=namespace, directory=directory, slots=SLOTS,
                            dtype=dtype) as transport:
            results[mode] = []
            for v in range(1, num_versions + SLOTS + 1):  # the first SLOTS map their slots
                with torch.no_grad():
                    params = list(model.parameters())
                    torch._foreach_add_(params, [torch.randn_like(p) * 1e-3 for p in params])
                state = to_hf_names({k: full_tensor(t) for k, t in model.state_dict().items()},
                                    model.config)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                published = transport.publish(v, state)
                publish_ms = (time.perf_counter() - t0) * 1e3
                parent.send((mode, published.locator, published.digest))
                got = parent.recv()
                lp_bf16, lp_fp32 = trainer_logprobs(model, torch.bfloat16), trainer_logprobs(
                    model, None)
                eng = torch.tensor(got.pop("logprobs"))
                got |= {"mode": mode, "version": v, "first_map": v <= SLOTS,
                        "publish_ms": publish_ms, **{f"publish_{k}": x for k, x in
                                                     transport.last_timings.items()},
                        "num_bytes": published.num_bytes,
                        "engine_vs_trainer_max": float((eng - lp_bf16).abs().max()),
                        "engine_vs_trainer_mean": float((eng - lp_bf16).abs().mean()),
                        "bf16_noise_max": float((lp_bf16 - lp_fp32).abs().max()),
                        "trainer_logprob_mean": float(lp_bf16.mean())}
                print(json.dumps(got), flush=True)
                results[mode].append(got)
    parent.send(None)
    proc.join(timeout=60)
    for mode, vs in results.items():
        steady = [v for v in vs if not v["first_map"]]
        ms = float(np.median([v["load_ms"] for v in steady]))
        print(f"{mode}: engine load {ms:.2f} ms = {ms / floors['floor_bf16_ms']:.2f}x the floor "
              f"({floors['floor_bf16_ms']:.2f} ms)", flush=True)
    info = machine_info() | {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "weight_sync.json"
    path.write_text(json.dumps({"info": info, **floors, "slots": SLOTS, "modes": results},
                               indent=2))
    return path


LABELS = {"ring_bf16": "ring, bf16 slots, mapped once, engine packed",
          "ring_bf16_busy": "ring, bf16 slots, engine packed, its GPU context active (a small "
          "copy just before, as a decoding engine's last step)",
          "ring_bf16_unpacked": "ring, bf16 slots, mapped once, engine NOT packed (previous "
          "path, baseline)",
          "ring_fp32": "ring, fp32 slots (engine casts), mapped once, engine packed",
          "reopen_fp32": "old path: IPC handle opened per version, fp32 slots"}


def record(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = json.loads(path.read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weight_sync.json").write_text(json.dumps(d, indent=2) + "\n")
    floor, modes = d["floor_bf16_ms"], d["modes"]
    steady = {m: [v for v in vs if not v["first_map"]] for m, vs in modes.items()}

    def med(mode: str, key: str, first: bool = False) -> float:
        rows = [v for v in modes[mode] if v["first_map"]] if first else steady[mode]
        return float(np.median([v[key] for v in rows]))

    fig, ax = plt.subplots(figsize=(9, 6.5))
    for mode, vs in modes.items():
        ax.plot([v["version"] for v in vs], [v["load_ms"] for v in vs], marker="o",
                label=f"engine load: {LABELS[mode]}")
    vs = modes["ring_bf16"]
    ax.plot([v["version"] for v in vs], [v["load_again_ms"] for v in vs], marker="x",
            linestyle="--", label="the bf16 ring load (packed) repeated at once")
    ax.axhline(floor, color="black", linestyle=":", label="floor: D2D copy of bf16 bytes")
    ax.axhline(2 * floor, color="black", linestyle="--", label="goal: 2× floor")
    ax.set_yscale("log")
    ax.set_xlabel(f"version (1-{d['slots']}: first use of each slot, maps it)")
    ax.set_ylabel("ms")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.tight_layout()
    png = RESULTS / "weight_sync.png"
    fig.savefig(png, dpi=110)

    def row(what: str, ms: float, goal: bool = False) -> str:
        verdict = ("met" if ms <= 2 * floor else "**missed**") if goal else ""
        return f"| {what} | {ms:.2f} | {ms / floor:.2f}× | {'≤ 2× ' + verdict if goal else ''} |"

    info, n = d["info"], len(steady["ring_bf16"])
    lines = [f"{info['date']} · {info['card']} · torch {info['torch']} · Qwen3-0.6B shape, "
             f"trainer fp32 → engine bf16 ({d['engine_bytes'] / 1e9:.2f} GB), cuda_ipc ring of "
             f"{d['slots']} slots, two processes, {n} versions per way after the "
             f"{d['slots']} that map the slots, medians", "",
             f"| engine side, per version | ms | × floor ({floor:.2f} ms) | goal |",
             "|---|---|---|---|"]
    lines += [row(f"engine load, {LABELS[m]} (manifest + views + copy_hf_weights + done)",
                  med(m, "load_ms"), goal=True) for m in modes]
    cold = float(np.median([v["floor_cold_ms"] for vs in steady.values() for v in vs]))
    packed, unpacked = med("ring_bf16", "load_ms"), med("ring_bf16_unpacked", "load_ms")
    lines += [f"| engine load, bf16 slots: packed over not packed (same run) | | "
              f"{packed / unpacked:.2f}× the baseline | |",
              row("  the same load repeated at once, packed (engine's context active, slot just "
                  "read)", med("ring_bf16", "load_again_ms"), goal=True),
              row("  the same load repeated at once, not packed",
                  med("ring_bf16_unpacked", "load_again_ms"), goal=True),
              row("  the floor copy after the same idle gap as the first load (cold floor)", cold),
              f"| engine load, ring, bf16 slots, packed, over the cold floor | | "
              f"{packed / cold:.2f}× the cold floor | |",
              row("  of which manifest + hold + views (ring, bf16)", med("ring_bf16", "open_ms")),
              row("  of which opening the handle + views (old path)",
                  med("reopen_fp32", "open_ms")),
              row("  copy_hf_weights alone, packed: one copy (its checked plan reused)",
                  med("ring_bf16", "copy_ms")),
              row("  copy_hf_weights alone, not packed: one _foreach_copy_ (plan reused)",
                  med("ring_bf16_unpacked", "copy_ms")),
              row("  one raw copy, slot to packed buffer (no plan, no Python)",
                  med("ring_bf16", "raw_copy_ms")),
              row("  the small copy before the busy-context load (not in its load time)",
                  med("ring_bf16_busy", "busy_ms")),
              row("engine load, ring, bf16 slots, digest checked in the background (critical "
                  "path: load + verify_later + copy + done)", med("ring_bf16", "verified_load_ms"),
                  goal=True),
              row("  the background check done (D2H on a side stream + sha256), from the start",
                  med("ring_bf16", "verified_at_ms")),
              row("first load of a slot (maps it, once per slot)",
                  med("ring_bf16", "load_ms", first=True)),
              row("floor for fp32 bytes", d["floor_fp32_ms"]),
              row("digest check in line, load(expected_digest=): bf16 slot (D2H + sha256, 1.2 GB)",
                  med("ring_bf16", "digest_ms")),
              row("digest check, fp32 slot (2.4 GB)", med("ring_fp32", "digest_ms")), "",
              "| trainer side, per version | ms (bf16 slots) | ms (fp32 slots) |",
              "|---|---|---|"]
    for key, what in (("publish_ms", "publish, whole"),
                      ("publish_wait_ms", "  waiting for readers to let go of the slot"),
                      ("publish_copy_ms", "  copy (and cast) into the slot: transfer"),
                      ("publish_digest_ms", "  digests (D2H + sha256): integrity")):
        lines.append(f"| {what} | {med('ring_bf16', key):.2f} | {med('ring_fp32', key):.2f} |")
    first, again = med("ring_bf16", "load_ms"), med("ring_bf16", "load_again_ms")
    copied = {m: sorted({v["copied"] for v in vs}) for m, vs in modes.items()}
    busy = med("ring_bf16_busy", "load_ms")
    lines += ["", "How `copy_hf_weights` copied, per way: " + "; ".join(
                  f"`{m}`: {', '.join(c)}" for m, c in copied.items()) + ".",
              "", f"Packed, the first load of a version is {first - again:.2f} ms slower than "
              f"the same load repeated at once, while a floor copy after the same idle gap is "
              f"{cold - floor:.2f} ms slower than a warm one; with the engine's context made "
              f"active by a small copy just before (a decoding engine's state between steps), the "
              f"first load takes {busy:.2f} ms ({busy / floor:.2f}×). Goal (≤ 2× the floor) on "
              f"the first load: {'met' if first <= 2 * floor else 'missed'} "
              f"({first / floor:.2f}×)."]
    vs = [v for vs in steady.values() for v in vs]
    within = sum(v["engine_vs_trainer_max"] <= 2 * v["bf16_noise_max"] for v in vs)
    lines += ["", f"Digests verified on every version of every way (a mismatch raises). The "
              "bf16 publish hashes both the trainer's fp32 tensors (the announced digest that "
              "audit and replay recompute) and the cast slot (what the engine checks). Engine "
              f"bf16 logprobs vs the trainer's (fixed {SEQ}-token sequence, mean |logprob| "
              f"{np.mean([abs(v['trainer_logprob_mean']) for v in vs]):.3g} nats): mean gap "
              f"{np.mean([v['engine_vs_trainer_mean'] for v in vs]):.3g}, worst max-abs gap "
              f"{max(v['engine_vs_trainer_max'] for v in vs):.3g} nats; within the tolerance "
              f"(2× the trainer's own bf16-vs-fp32 max gap, per version) on {within} of "
              f"{len(vs)} versions.", "", f"![weight_sync]({png.relative_to(ROOT)})"]
    replace_section("weight_sync", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/weight_sync"))
    p.add_argument("--record", type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--versions", type=int, default=6)
    args = p.parse_args()
    if args.record:
        record(args.record)
        return
    print(run(args.out, args.quick, args.versions))


if __name__ == "__main__":
    main()
