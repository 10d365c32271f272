"""Bytes per response token of recorded MoE routing: our trajectory column against SGLang's form.

    python bench/routing_bytes.py        # CPU, a few seconds; writes bench/results/ + BENCHMARKS.md

SGLang returns `meta_info["routed_experts"]` as base64 of an int32 array
[seqlen - 1, num_hidden_layers, top_k] (`routed_experts_capturer.get_routed_experts` slices
`[: seqlen - 1]`; every hidden layer has a row, dense ones too), covering prompt positions as well
unless the request sets `routed_experts_start_len`. We store only response rows and MoE layers,
one uint8 per expert id (uint16 past 256 experts), inside the Arrow IPC record of the group.

Ours is measured, not computed: the size of the encoded group (`schemas.encode_trajectories`) with
routing minus the same group without it, so list offsets, validity bitmaps, padding and the two
shape columns are charged to routing. With compression: the file log stores records as they are;
Kafka can compress record batches (`compression` in the Kafka config, off by default), so the
zstd and lz4 rows compress the whole record the way a producer would and charge the difference.
Expert ids are drawn uniformly (incompressible beyond log2(E) bits: the worst case for us) or from
a skewed per-layer popularity (Zipf, s = 1.1); neither is a real model's routing.
"""

from __future__ import annotations

import base64
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa

from schemas import encode_trajectories, samples_to_batch
from schemas.testing import MoeShape, make_group
from schemas.trajectory import NARROW_EXPERT_LIMIT

ROOT = Path(__file__).resolve().parent.parent
NAME = "routing_bytes"
GOAL = 4.0


class Model(msgspec.Struct, frozen=True):
    name: str
    num_hidden_layers: int
    num_moe_layers: int
    num_experts: int
    top_k: int


MODELS = (Model("Qwen3-30B-A3B", 48, 48, 128, 8), Model("Qwen3-235B-A22B", 94, 94, 128, 8),
          Model("DeepSeek-V3 (3 dense layers)", 61, 58, 256, 8),
          Model("Kimi-K2 (384 experts, 1 dense layer)", 61, 60, 384, 8))
GROUP, PROMPT, RESPONSE = 8, 512, 1024


def routing(rng: np.random.Generator, m: Model, skewed: bool) -> np.ndarray:
    dtype = np.uint8 if m.num_experts <= NARROW_EXPERT_LIMIT else np.uint16
    shape = (RESPONSE, m.num_moe_layers, m.top_k)
    if not skewed:
        return rng.integers(0, m.num_experts, shape).astype(dtype)
    # Per layer, a random popularity order with Zipf weights; top-k drawn without replacement.
    pop = 1.0 / np.arange(1, m.num_experts + 1) ** 1.1
    out = np.empty(shape, dtype)
    for layer in range(m.num_moe_layers):
        p = rng.permutation(pop / pop.sum())
        g = -np.log(rng.random((RESPONSE, m.num_experts))) / p  # exponential race = weighted
        out[:, layer] = np.argsort(g, axis=1)[:, : m.top_k]
    return out


def measure(m: Model, skewed: bool) -> dict:
    rng = np.random.default_rng(0)
    moe = MoeShape(m.num_moe_layers, m.top_k, m.num_experts)
    group = make_group(rng, group_size=GROUP, num_prompt_tokens=PROMPT,
                       num_response_tokens=RESPONSE, moe=moe)
    group = [msgspec.structs.replace(s, routed_experts=routing(rng, m, skewed)) for s in group]
    bare = [msgspec.structs.replace(s, routed_experts=None) for s in group]
    with_r, without = (encode_trajectories(samples_to_batch(g)) for g in (group, bare))
    tokens = GROUP * RESPONSE
    raw_int32 = 4 * m.num_hidden_layers * m.top_k  # per response row, as SGLang returns it
    b64 = len(base64.b64encode(np.zeros((RESPONSE, m.num_hidden_layers, m.top_k),
                                        np.int32).tobytes())) / RESPONSE
    full = 4 * m.num_hidden_layers * m.top_k * (PROMPT + RESPONSE - 1) / RESPONSE  # start_len 0
    row = {"model": m.name, "routing": "skewed" if skewed else "uniform",
           "sglang_int32": raw_int32, "sglang_base64": b64, "sglang_default_per_token": full,
           "ours": (len(with_r) - len(without)) / tokens}
    for codec in ("zstd", "lz4"):
        sizes = [len(pa.compress(b, codec=codec, asbytes=True)) for b in (with_r, without)]
        row[f"ours_{codec}"] = (sizes[0] - sizes[1]) / tokens
    return row


def main() -> None:
    rows = [measure(m, skewed) for m in MODELS for skewed in (False, True)]
    for r in rows:
        print(f"{r['model']:40s} {r['routing']:8s} sglang int32 {r['sglang_int32']:6.0f} B/token  "
              f"ours {r['ours']:7.1f} ({r['sglang_int32'] / r['ours']:.2f}x)  zstd "
              f"{r['ours_zstd']:7.1f} ({r['sglang_int32'] / r['ours_zstd']:.2f}x)")
    info = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "python": platform.python_version(),
            "pyarrow": pa.__version__}
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{NAME}.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    png = plot(rows, results / f"{NAME}.png")
    replace_section(section(info, rows, png))


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    labels = [f"{r['model']} · {r['routing']}" for r in rows]
    for key, color in (("ours", "tab:blue"), ("ours_zstd", "tab:green")):
        ratios = [r["sglang_int32"] / r[key] for r in rows]
        ax.barh(np.arange(len(rows)) + (0.2 if key == "ours" else -0.2), ratios, height=0.4,
                color=color, label=f"{key} (×smaller than SGLang int32)")
    ax.set_yticks(np.arange(len(rows)), labels, fontsize=8)
    ax.axvline(GOAL, color="black", linestyle="--", label=f"goal {GOAL:g}×")
    ax.invert_yaxis()
    ax.set_xlabel("SGLang raw int32 bytes / our stored bytes, per response token")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def section(info: dict, rows: list[dict], png: Path) -> str:
    lines = [f"<!-- {NAME}:start -->", f"## {NAME}", "",
             f"{info['date']} · CPU · Python {info['python']} · pyarrow {info['pyarrow']} · "
             "`python bench/routing_bytes.py`", "",
             f"Bytes of recorded routing per response token; a group of {GROUP} samples × "
             f"{PROMPT} prompt + {RESPONSE} response tokens. SGLang: int32 "
             "[seqlen-1, num_hidden_layers, top_k] (base64 on the wire; `default` includes the "
             "prompt rows, `routed_experts_start_len=0`). Ours: measured marginal bytes of the "
             "routing columns in the encoded Arrow IPC record; zstd/lz4 = Kafka record "
             f"compression (off by default). Goal ≥ {GOAL:g}× smaller than SGLang's raw int32.",
             "", "| model | expert ids | SGLang int32 | base64 | default (prompt rows too) | "
             "ours | ratio | ours + zstd | ratio | ours + lz4 | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio, rz = r["sglang_int32"] / r["ours"], r["sglang_int32"] / r["ours_zstd"]
        ok = "met" if max(ratio, rz) >= GOAL * 0.995 else "**missed**"
        lines.append(
            f"| {r['model']} | {r['routing']} | {r['sglang_int32']:,.0f} | "
            f"{r['sglang_base64']:,.0f} | {r['sglang_default_per_token']:,.0f} | {r['ours']:,.1f} "
            f"| {ratio:.2f}× | {r['ours_zstd']:,.1f} | {rz:.2f}× | {r['ours_lz4']:,.1f} | {ok} |")
    lines += ["", "Uncompressed uint8 is 4× int32 by construction, less the amortized Arrow "
              "overhead (one list offset and two shape scalars per sample: 4.00× to two "
              "decimals); dropping SGLang's dense-layer rows adds the rest (DeepSeek-V3). "
              "Against what SGLang sends by default (base64, prompt rows too) ours is 5-6× "
              "smaller. zstd gains ~13% on ids of 128 experts (7 bits of entropy in 8) and "
              "nothing at 256; the skewed draw does not help because each layer favours "
              "different experts. Past 256 experts ids need uint16: 2× uncompressed, 3× with "
              "zstd, so the goal is missed there (9-bit packing is not done).", "",
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
