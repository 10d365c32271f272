"""Routing replay through megatron-core's RouterReplay, on the GPU: the train-rollout logprob
mismatch of the megatron trainer with and without replay, and of the torch trainer in the same
run (the baseline).

    python -m bench.megatron_routing_replay --out DIR     # CUDA + megatron-core; ~80 s on an H100
    python -m bench.megatron_routing_replay --report DIR/megatron_routing_replay.json
                                        # writes bench/results/ + the BENCHMARKS.md section

As `bench/moe_routing_replay.py` (whose model, inits and engine run this reuses): the embedded
engine samples in bf16 with the torch model (KV cache, batched decode) and records the routed
experts of every response token. Each trainer then scores the same tokens the way its learner
does on a GPU, one teacher-forced pass with fp32 master weights under bf16 autocast, routing
freely (`free`) or replaying the record (`replay`): the torch trainer through its forced-routing
MoE, the megatron trainer (`consumers/trainer/megatron`, local MoE spec) through RouterReplay.
Reported per trainer and mode: mean/p99/max |trainer - engine logprob| over the sampled tokens,
the share of tokens whose top-k differs from the record in any MoE layer, and the share of
(token, layer) decisions that differ, read from what the trainer's experts actually received.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from bench.common import ROOT, replace_section
from bench.moe_routing_replay import FULL, Init, as_sample, build_model, generate
from streamrl.consumers.trainer.batch import TrainBatch, build_batch
from streamrl.consumers.trainer.megatron import model as mg
from streamrl.consumers.trainer.megatron.replay import batch_major, routing_maps
from streamrl.models import CausalLM, token_logprobs
from streamrl.models.checkpoint import to_hf_names

NAME = "megatron_routing_replay"


def torch_scores(model: CausalLM, batch: TrainBatch, replay: bool) -> tuple[torch.Tensor, ...]:
    """[B, S] logprobs and [B, S, L, k] routed ids of the torch trainer."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch.tokens, batch.positions,
                    forced_routing=batch.forced_routing if replay else None,
                    routing_mask=batch.routing_mask if replay else None, return_hidden=True)
        logp, _ = token_logprobs(out.hidden, model.lm_head.weight, batch.targets)
    return logp, out.routed_experts


def megatron_scores(gpt, batch: TrainBatch, replay: bool, k: int) -> tuple[torch.Tensor, ...]:
    """[B, S] logprobs and [B, S, L, k] ids the megatron trainer's experts received."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), \
            routing_maps(gpt) as maps:
        logp = mg.logprobs(gpt, batch.tokens, batch.targets,
                           forced_routing=batch.forced_routing if replay else None,
                           routing_mask=batch.routing_mask if replay else None)
    routing = batch_major(maps[-1], batch.tokens.shape[0])  # the scoring pass, not RECORD
    return logp, routing.float().topk(k, dim=-1).indices


def mismatch(logp: torch.Tensor, routed: torch.Tensor, batch: TrainBatch) -> dict:
    assert batch.forced_routing is not None and batch.routing_mask is not None
    mask, recorded = batch.loss_mask, batch.routing_mask
    delta = (logp - batch.old_logprobs).abs()[mask].float()
    ours = routed[recorded].long().sort(-1).values  # [N, L, k]
    theirs = batch.forced_routing[recorded].long().sort(-1).values
    differs = (ours != theirs).any(-1)  # [N, L]
    return {"mean_abs_dlogp": float(delta.mean()), "p99_abs_dlogp": float(delta.quantile(0.99)),
            "max_abs_dlogp": float(delta.max()),
            "tokens_topk_differs_any_layer": float(differs.any(-1).float().mean()),
            "router_decisions_differ": float(differs.float().mean()),
            "hist": np.histogram(np.log10(delta.clamp_min(1e-6).cpu().numpy()), bins=40,
                                 range=(-6, 1))[0].tolist()}


def measure(init: Init, num_prompts: int, max_new: int) -> dict:
    model = build_model(FULL, init, seed=0)
    results = generate(model, "cuda", num_prompts, max_new, seed=1)
    batch = build_batch([as_sample(r, i) for i, r in enumerate(results)]).to("cuda")
    config, k = model.config, model.config.num_experts_per_tok
    trainer = model.to("cuda", torch.float32).eval()  # fp32 master weights, bf16 autocast
    gpt = mg.build_gpt(config)
    mg.load_hf(gpt, to_hf_names(trainer.state_dict(), config), config)
    gpt.eval()
    row: dict = {"init": init._asdict(), "num_tokens": int(batch.loss_mask.sum()),
                 "mean_sampling_logprob": float(batch.old_logprobs[batch.loss_mask].mean())}
    logps = {}
    for backend in ("torch", "megatron"):
        for mode in ("free", "replay"):
            logp, routed = (torch_scores(trainer, batch, mode == "replay") if backend == "torch"
                            else megatron_scores(gpt, batch, mode == "replay", k))
            row[f"{backend}_{mode}"] = mismatch(logp, routed, batch)
            logps[backend, mode] = logp
    between = (logps["megatron", "replay"] - logps["torch", "replay"]).abs()[batch.loss_mask]
    row["megatron_vs_torch_replay"] = {"mean_abs": float(between.mean()),
                                       "max_abs": float(between.max())}
    del gpt
    torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="write the measurement JSON here")
    p.add_argument("--report", type=Path, help="a measurement JSON: write results + BENCHMARKS")
    p.add_argument("--inits", type=Init.parse, nargs="+",
                   default=[Init(1, 1, 1), Init(1, 3, 8), Init(4, 3, 8)],
                   help="ROUTER,EXPERTS,HEAD multipliers on the default init, one run each")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = p.parse_args()
    if args.report:
        write_report(json.loads(args.report.read_text()))
        return
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU and megatron-core (pip install 'streamrl[megatron]')")
    mg.initialize()
    rows = []
    for init in args.inits:
        t0 = time.perf_counter()
        row = measure(init, args.num_prompts, args.max_new_tokens)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"init {tuple(init)}: " + ", ".join(
            f"{key} |dlogp| {row[key]['mean_abs_dlogp']:.4f} flipped "
            f"{row[key]['tokens_topk_differs_any_layer']:.3f}"
            for key in ("torch_free", "torch_replay", "megatron_free", "megatron_replay"))
            + f"; megatron vs torch (replay) {row['megatron_vs_torch_replay']['mean_abs']:.4f}"
            f" ({row['seconds']} s)", flush=True)
        save(args.out, rows, args)  # after every row: a timeout keeps the rest


def save(out: Path | None, rows: list, args: argparse.Namespace) -> None:
    if out is None:
        return
    import megatron.core

    info = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "card": torch.cuda.get_device_name(),
            "torch": torch.__version__, "megatron_core": megatron.core.__version__,
            "python": platform.python_version()}
    payload = {"info": info, "shape": FULL, "num_prompts": args.num_prompts,
               "max_new_tokens": args.max_new_tokens, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(payload, indent=1) + "\n")


def write_report(payload: dict) -> None:
    """bench/results/megatron_routing_replay.{json,png} and the BENCHMARKS.md section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{NAME}.json").write_text(json.dumps(payload, indent=1) + "\n")
    rows, keys = payload["rows"], ("torch_free", "torch_replay", "megatron_free",
                                   "megatron_replay")
    colors = ("tab:red", "tab:green", "tab:orange", "tab:blue")
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(rows))
    for j, (key, color) in enumerate(zip(keys, colors, strict=True)):
        ax.bar(x + (j - 1.5) * 0.2, [r[key]["mean_abs_dlogp"] for r in rows], 0.2,
               color=color, label=key.replace("_", ", "))
    ax.set_xticks(x, [f"router×{r['init']['router']:g} experts×{r['init']['experts']:g} "
                      f"head×{r['init']['head']:g}" for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("mean |trainer - engine logprob|")
    ax.legend(fontsize=8)
    ax.set_title(f"routing replay, torch vs megatron-core {payload['info']['megatron_core']} "
                 f"trainer, bf16, {payload['info']['card']}", fontsize=9)
    fig.tight_layout()
    png = results / f"{NAME}.png"
    fig.savefig(png, dpi=110)
    replace_section(NAME, section(payload, png))


def section(payload: dict, png: Path) -> str:
    info, shape = payload["info"], payload["shape"]
    lines = [
        f"{info['date']} · GPU: {info['card']} · torch {info['torch']} · megatron-core "
        f"{info['megatron_core']} · Python {info['python']} · "
        "`python -m bench.megatron_routing_replay`", "",
        f"Qwen3-MoE shape: {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
        f"{shape['num_experts']} experts top-{shape['num_experts_per_tok']}, vocab "
        f"{shape['vocab_size']}; {payload['num_prompts']} prompts × {payload['max_new_tokens']} "
        "sampled tokens. The embedded engine samples in bf16 and records routing; each trainer "
        "scores the same tokens with fp32 master weights under bf16 autocast, routing freely or "
        "replaying the record (megatron: through its RouterReplay). Init multipliers as in "
        "`moe_routing_replay`. Flipped = the share of tokens whose top-k differs from the record "
        "in any layer, read from the experts the trainer's MoE layers actually received.", "",
        r"| init (router, experts, head) | trainer | mean \|Δ logprob\| free → replay | "
        "p99 free → replay | max free → replay | flipped tokens free → replay | "
        "router decisions differ (free) | ratio free/replay |", "|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        i = r["init"]
        for backend in ("torch", "megatron"):
            f, p = r[f"{backend}_free"], r[f"{backend}_replay"]
            lines.append(
                f"| {i['router']:g}, {i['experts']:g}, {i['head']:g} | {backend} | "
                f"{f['mean_abs_dlogp']:.4f} → {p['mean_abs_dlogp']:.4f} | "
                f"{f['p99_abs_dlogp']:.3f} → {p['p99_abs_dlogp']:.3f} | "
                f"{f['max_abs_dlogp']:.2f} → {p['max_abs_dlogp']:.2f} | "
                f"{f['tokens_topk_differs_any_layer']:.1%} → "
                f"{p['tokens_topk_differs_any_layer']:.1%} | {f['router_decisions_differ']:.1%} | "
                f"{f['mean_abs_dlogp'] / max(p['mean_abs_dlogp'], 1e-12):.1f}× |")
    between = ", ".join(f"{r['megatron_vs_torch_replay']['mean_abs']:.4f} (max "
                        f"{r['megatron_vs_torch_replay']['max_abs']:.3f})" for r in payload["rows"])
    lines += ["", f"megatron vs torch trainer under replay, mean (max) |Δ logprob| per init: "
              f"{between}. Reading and caveats: `docs/routing-replay.md`.", "",
              f"![{NAME}]({png.relative_to(ROOT)})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
