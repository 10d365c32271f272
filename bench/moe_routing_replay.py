"""MoE routing replay on the GPU: the train-rollout logprob mismatch with and without replay.

    python bench/moe_routing_replay.py --out DIR            # a CUDA machine; ~1 min on an H100
    python bench/moe_routing_replay.py --smoke --out DIR    # tiny shapes on CPU: checks the script
    python bench/moe_routing_replay.py --report DIR/moe_routing_replay.json
                                        # writes bench/results/ + the BENCHMARKS.md section

The embedded engine generates in bf16 (KV cache, batched decode) and records the routed experts
of every response token; the trainer then scores the same tokens with one teacher-forced bf16
forward, as the learner does, once routing freely and once replaying the record. Same weights,
same dtype: every difference comes from the two computations' different shapes and kernels
(prefill + one-token decode steps against one padded full-sequence pass), which is the mismatch
every async RL system has. Near-tie router decisions flip under that noise, and a flipped
expert changes the token's output far more than rounding does.

Random-init routers are near-uniform and flip far more often than trained ones, so the script
measures each init named in `--inits`: multipliers on the default random init of the router, the
expert matrices and the LM head. At the default init the experts add ~3% to the residual stream
and the LM head is near-uniform, so a flipped expert barely moves a logprob; larger expert and
head multipliers make the experts matter as in a trained model. Each row reports the router's
sharpness (mean top-k probability mass) so the reader can place it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from streamrl.consumers.trainer.batch import build_batch
from streamrl.models import CausalLM, ModelConfig, token_logprobs
from streamrl.models.moe import MoE
from streamrl.producers.engine import EngineConfig, GenerationRequest, SamplingParams, TorchEngine
from streamrl.schemas import Sample

ROOT = Path(__file__).resolve().parent.parent
NAME = "moe_routing_replay"
FULL = dict(vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
            num_attention_heads=16, num_key_value_heads=4, head_dim=64, num_experts=64,
            num_experts_per_tok=8, moe_intermediate_size=256)
SMOKE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
             num_experts_per_tok=2, moe_intermediate_size=32)


def build_model(shape: dict, init: Init, seed: int) -> CausalLM:
    torch.manual_seed(seed)
    config = ModelConfig(model_type="qwen3_moe", norm_topk_prob=True,
                         max_position_embeddings=4096, **shape)
    model = CausalLM(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MoE):
                m.gate.weight.mul_(init.router)
                for w in (m.experts.gate_proj, m.experts.up_proj, m.experts.down_proj):
                    w.mul_(init.experts)
        model.lm_head.weight.mul_(init.head)
    return model


class Init(NamedTuple):
    """Multipliers on the default init: router weights, every expert matrix, the LM head."""

    router: float
    experts: float
    head: float

    @classmethod
    def parse(cls, text: str) -> Init:
        return cls(*map(float, text.split(",")))


def generate(model: CausalLM, device: str, num_prompts: int, max_new: int, seed: int) -> list:
    g = np.random.default_rng(seed)
    engine_model = build_like(model)
    engine = TorchEngine(engine_model, EngineConfig(
        max_batch_size=num_prompts, max_seq_len=2 * max_new + 8, device=device,
        dtype="bfloat16"))
    requests = [GenerationRequest(
        request_id=f"r{i}",
        prompt_tokens=g.integers(0, model.config.vocab_size, int(g.integers(4, max(max_new, 5)))),
        params=SamplingParams(temperature=1.0, max_new_tokens=max_new, seed=seed * 1000 + i))
        for i in range(num_prompts)]
    return engine.generate(requests)


def build_like(model: CausalLM) -> CausalLM:
    copy = CausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    return copy


def as_sample(result, i: int) -> Sample:
    now = datetime.now(UTC)
    return Sample(
        run_id="bench", sample_id=f"s{i}", group_id=f"g{i}", prompt_id=f"p{i}", sample_index=0,
        producer_id="bench", policy_version=0, prompt_tokens=result.prompt_tokens,
        response_tokens=result.response_tokens, logprobs=result.logprobs,
        loss_mask=np.ones(len(result.response_tokens), bool), reward=0.0,
        finish_reason=result.finish_reason, seed=result.seed, started_at=now, finished_at=now,
        response_versions=result.response_versions, routed_experts=result.routed_experts)


@torch.inference_mode()
def measure(model: CausalLM, results: list, device: str) -> dict:
    trainer = build_like(model).to(device=device, dtype=torch.bfloat16).eval()
    batch = build_batch([as_sample(r, i) for i, r in enumerate(results)]).to(device)
    assert batch.forced_routing is not None and batch.routing_mask is not None
    mask, recorded = batch.loss_mask, batch.routing_mask
    out: dict = {"num_tokens": int(mask.sum()),
                 "mean_sampling_logprob": float(batch.old_logprobs[mask].mean())}
    for name, forced in (("free", None), ("replay", batch.forced_routing)):
        o = trainer(batch.tokens, batch.positions, forced_routing=forced,
                    routing_mask=batch.routing_mask if forced is not None else None,
                    return_hidden=True)
        logp, _ = token_logprobs(o.hidden, trainer.lm_head.weight, batch.targets)
        delta = (logp - batch.old_logprobs).abs()[mask].float()
        ours = o.routed_experts[recorded].sort(-1).values  # [N, L, k]
        theirs = batch.forced_routing[recorded].sort(-1).values.to(ours.dtype)
        # A decision = one (token, layer) top-k set; an expert slot = one of its k members.
        layer_differs = (ours != theirs).any(-1)  # [N, L]
        missing = ~(ours[..., :, None] == theirs[..., None, :]).any(-1)  # [N, L, k]
        out[name] = {
            "mean_abs_dlogp": float(delta.mean()), "p99_abs_dlogp": float(delta.quantile(0.99)),
            "max_abs_dlogp": float(delta.max()),
            "tokens_topk_differs_any_layer": float(layer_differs.any(-1).float().mean()),
            "router_decisions_differ": float(layer_differs.float().mean()),
            "expert_slots_differ": float(missing.float().mean()),
            "hist": np.histogram(np.log10(delta.clamp_min(1e-6).cpu().numpy()),
                                 bins=40, range=(-6, 1))[0].tolist()}
        if name == "free":
            flipped = layer_differs.any(-1).cpu()
            d = delta.cpu()
            out["free"]["mean_abs_dlogp_flipped_tokens"] = float(d[flipped].mean()) \
                if flipped.any() else 0.0
            out["free"]["mean_abs_dlogp_unflipped_tokens"] = float(d[~flipped].mean()) \
                if (~flipped).any() else 0.0
    out["router"] = router_sharpness(trainer, batch)
    return out


def router_sharpness(model: CausalLM, batch) -> dict:
    """Mean top-k probability mass and k-th vs (k+1)-th logit gap over the scored tokens."""
    k, captured = model.config.num_experts_per_tok, []
    hooks = [m.gate.register_forward_hook(lambda _m, _i, o: captured.append(o.float()))
             for m in model.modules() if isinstance(m, MoE)]
    model(batch.tokens, batch.positions, return_hidden=True)
    for h in hooks:
        h.remove()
    sel = batch.loss_mask.reshape(-1)
    masses, gaps = [], []
    for logits in captured:  # [B*S, E] per MoE layer
        top = logits[sel].topk(k + 1, dim=-1).values
        masses.append(logits[sel].softmax(-1).topk(k, dim=-1).values.sum(-1).mean())
        gaps.append((top[:, k - 1] - top[:, k]).mean())
    return {"topk_mass": float(torch.stack(masses).mean()),
            "kth_gap": float(torch.stack(gaps).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="write the measurement JSON here")
    p.add_argument("--report", type=Path, help="a measurement JSON: write results + BENCHMARKS")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, CPU")
    p.add_argument("--inits", type=Init.parse, nargs="+",
                   default=[Init(1, 1, 1), Init(1, 3, 8), Init(4, 3, 8)],
                   help="ROUTER,EXPERTS,HEAD multipliers on the default init, one run each")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = p.parse_args()
    if args.report:
        write_report(json.loads(args.report.read_text()))
        return
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    shape = SMOKE if args.smoke else FULL
    n, r = (4, 8) if args.smoke else (args.num_prompts, args.max_new_tokens)
    rows = []
    for init in args.inits:
        t0 = time.perf_counter()
        model = build_model(shape, init, seed=0)
        results = generate(model, device, n, r, seed=1)
        row = {"init": init._asdict(), **measure(model, results, device),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        f, rp = row["free"], row["replay"]
        print(f"init {tuple(init)}  top-k mass {row['router']['topk_mass']:.3f}  "
              f"free: |dlogp| {f['mean_abs_dlogp']:.4f} (max {f['max_abs_dlogp']:.3f}), "
              f"tokens flipped {f['tokens_topk_differs_any_layer']:.3f}, decisions "
              f"{f['router_decisions_differ']:.4f}  replay: |dlogp| {rp['mean_abs_dlogp']:.4f} "
              f"(max {rp['max_abs_dlogp']:.3f}), flipped {rp['tokens_topk_differs_any_layer']}",
              flush=True)
        save(args.out, device, shape, n, r, rows)  # after every row: a timeout keeps the rest


def save(out: Path | None, device: str, shape: dict, n: int, r: int, rows: list) -> None:
    if out is None:
        return
    card = torch.cuda.get_device_name() if device == "cuda" else "none (CPU)"
    payload = {"info": {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "card": card,
                        "torch": torch.__version__, "python": platform.python_version(),
                        "device": device},
               "shape": shape, "num_prompts": n, "max_new_tokens": r, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(payload, indent=1) + "\n")


def write_report(payload: dict) -> None:
    """bench/results/moe_routing_replay.{json,png} and this benchmark's BENCHMARKS.md section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{NAME}.json").write_text(json.dumps(payload, indent=1) + "\n")
    rows = payload["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.4), sharey=True)
    edges = np.linspace(-6, 1, 41)
    for ax, row in zip(np.atleast_1d(axes), rows, strict=True):
        for name, color in (("free", "tab:red"), ("replay", "tab:green")):
            ax.stairs(row[name]["hist"], edges, color=color, label=(
                f"{name}: mean {row[name]['mean_abs_dlogp']:.3g}"))
        init = row["init"]
        ax.set_title(f"router×{init['router']:g} experts×{init['experts']:g} "
                     f"head×{init['head']:g}", fontsize=9)
        ax.set_xlabel("log10 |trainer - engine logprob| (|Δ| > 10 off the right edge)")
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("response tokens")
    fig.suptitle(f"MoE routing replay, bf16, {payload['info']['card']}", fontsize=10)
    fig.tight_layout()
    png = results / f"{NAME}.png"
    fig.savefig(png, dpi=110)
    replace_section(section(payload, png))


def section(payload: dict, png: Path) -> str:
    info, shape = payload["info"], payload["shape"]
    lines = [
        f"<!-- {NAME}:start -->", f"## {NAME}", "",
        f"{info['date']} · GPU: {info['card']} · torch {info['torch']} · Python "
        f"{info['python']} · `python bench/moe_routing_replay.py`", "",
        f"Qwen3-MoE shape: {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
        f"{shape['num_experts']} experts top-{shape['num_experts_per_tok']}, vocab "
        f"{shape['vocab_size']}; {payload['num_prompts']} prompts × {payload['max_new_tokens']} "
        "sampled tokens (temperature 1). The engine generates in bf16 and records routing; the "
        "trainer scores the same tokens in bf16 with the same weights, routing freely (`free`) "
        "or replaying the record (`replay`). Init: multipliers on the default random init "
        "(router weights, expert matrices, LM head); `top-k mass` is the router's mean top-k "
        "probability, the sharpness of this random router.", "",
        "| init (router, experts, head) | top-k mass | mean sampled logprob | "
        r"mean \|Δ logprob\| free → replay | p99 free → replay | max free → replay | "
        "tokens whose top-k differs in any layer (free) | router decisions that differ (free) "
        "| ratio free/replay |", "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        f, p = r["free"], r["replay"]
        i = r["init"]
        lines.append(
            f"| {i['router']:g}, {i['experts']:g}, {i['head']:g} | {r['router']['topk_mass']:.2f} "
            f"| {r['mean_sampling_logprob']:.2f} | {f['mean_abs_dlogp']:.4f} → "
            f"{p['mean_abs_dlogp']:.4f} | {f['p99_abs_dlogp']:.3f} → {p['p99_abs_dlogp']:.3f} | "
            f"{f['max_abs_dlogp']:.2f} → {p['max_abs_dlogp']:.2f} | "
            f"{f['tokens_topk_differs_any_layer']:.1%} | {f['router_decisions_differ']:.1%} | "
            f"{f['mean_abs_dlogp'] / max(p['mean_abs_dlogp'], 1e-12):.1f}× |")
    lines += ["", "With replay no token's top-k differs (measured 0.0% in every row; the model "
              "obeys forced ids). Reading and caveats: `docs/routing-replay.md`.", "",
              f"![{NAME}]({png.relative_to(ROOT)})", f"<!-- {NAME}:end -->"]
    return "\n".join(lines)


def replace_section(text_section: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    start, end = f"<!-- {NAME}:start -->", f"<!-- {NAME}:end -->"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + text_section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + text_section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
