"""HF ↔ megatron-core GPTModel weight names and layouts, on plain tensors, for every family
of `streamrl.models` that GPTModel can express (`megatron_unsupported` says what it cannot).

Pure tensor reshuffling: no megatron import, no CUDA, so CI checks it on CPU and a round trip
is exact (tensors are sliced and concatenated, never recomputed). Dense models with the local
layer spec (`get_gpt_layer_local_spec(qk_layernorm=config.qk_norm, normalization="RMSNorm")`;
the q/k norms exist only for Qwen3, the q/k/v bias only for Qwen2, `add_qkv_bias`):

    HF (model.layers.i. / decoder.layers.i.)   megatron-core
    model.embed_tokens.weight                  embedding.word_embeddings.weight
    input_layernorm.weight                     input_layernorm.weight
    self_attn.{q,k,v}_proj.weight              self_attention.linear_qkv.weight
    self_attn.{q,k,v}_proj.bias (Qwen2)        self_attention.linear_qkv.bias
    self_attn.{q,k}_norm.weight                self_attention.{q,k}_layernorm.weight
    self_attn.o_proj.weight                    self_attention.linear_proj.weight
    post_attention_layernorm.weight            pre_mlp_layernorm.weight
    mlp.{gate,up}_proj.weight                  mlp.linear_fc1.weight
    mlp.down_proj.weight                       mlp.linear_fc2.weight
    model.norm.weight                          decoder.final_layernorm.weight
    lm_head.weight (untied only)               output_layer.weight (untied only)

Qwen3-MoE layers (`config.moe_layers`; the others keep the dense MLP above), with megatron's
local MoE spec (SequentialMLP: one MLP per expert) and, for Qwen2-MoE style models, a gated
shared expert:

    mlp.gate.weight                            mlp.router.weight
    mlp.experts.{e}.{gate,up}_proj.weight      mlp.experts.local_experts.{e}.linear_fc1.weight
    mlp.experts.{e}.down_proj.weight           mlp.experts.local_experts.{e}.linear_fc2.weight
    mlp.shared_expert.{gate,up}_proj.weight    mlp.shared_experts.linear_fc1.weight
    mlp.shared_expert.down_proj.weight         mlp.shared_experts.linear_fc2.weight
    mlp.shared_expert_gate.weight              mlp.shared_experts.gate_weight

linear_qkv (weight and bias alike) interleaves per KV group: for each of the G groups, that
group's H/G query heads, then its key head, then its value head (rows of head_dim each), which
is how megatron splits the fused projection. Every linear_fc1 is [gate; up] stacked along
rows. HF names are the per-expert ones hub checkpoints use
(`streamrl.models.checkpoint.to_hf_names` writes them).

GLM-4.5 (`glm4_moe`) is the dense attention above (q/k/v bias, optional q/k norm; partial
rotary is megatron's `rotary_percent`, no weights). Its MoE layers, and DeepSeek-V3's /
Kimi K2's (`config.deepseek_moe`), have an ungated shared expert MLP and a router bias that
only chooses experts (a buffer on both sides, never trained):

    mlp.gate.e_score_correction_bias           mlp.router.expert_bias
    mlp.shared_experts.{gate,up}_proj.weight   mlp.shared_experts.linear_fc1.weight
    mlp.shared_experts.down_proj.weight        mlp.shared_experts.linear_fc2.weight

DeepSeek-V3 / Kimi K2 (`config.is_mla`): megatron's MLASelfAttention keeps HF's layouts (q up
rows per head [nope; rope], the kv down rows [latent; rope], kv up rows per head [nope; v]),
so its weights are renames:

    self_attn.q_a_proj.weight                  self_attention.linear_q_down_proj.weight
    self_attn.q_a_layernorm.weight             self_attention.q_layernorm.weight
    self_attn.q_b_proj.weight                  self_attention.linear_q_up_proj.weight
    self_attn.q_proj.weight (q_lora_rank None) self_attention.linear_q_proj.weight
    self_attn.kv_a_proj_with_mqa.weight        self_attention.linear_kv_down_proj.weight
    self_attn.kv_a_layernorm.weight            self_attention.kv_layernorm.weight
    self_attn.kv_b_proj.weight                 self_attention.linear_kv_up_proj.weight

Not expressible, so refused: a bias on o_proj or the MLP (Llama's `attention_bias` /
`mlp_bias`, Qwen3's `attention_bias`; megatron's `add_bias_linear` biases every linear layer
at once, and no released checkpoint of these families has them); llama3 rope scaling other
than megatron's built-in (low_freq_factor 1, high_freq_factor 4, original context 8192, as in
Llama 3.1-3.3; any `factor`); a Mistral sliding window shorter than the model's context
(Mistral-7B-v0.1's; the local spec's attention has none); YaRN outside MLA. For the
DeepSeek-style router (megatron-core 0.19 `topk_routing_with_score_function`): sigmoid scores
are always renormalized over the top k (k > 1), so `norm_topk_prob = false` is refused (and
k = 1 with it true); megatron ranks a group by the sum of its best k / topk_group scores where
transformers sums the best 2, so group-limited routing is exact only when k / topk_group == 2
or when the groups cannot matter (n_group == 1 or topk_group == n_group). MLA: megatron rotates
interleaved pairs only (`rope_interleave = false` refused); of YaRN's settings, `truncate =
false`, an explicit `attention_factor` and `mscale_all_dim` without `mscale` have no megatron
counterpart; without `q_lora_rank` (DeepSeek-V2-Lite style; V3 and K2 have one) megatron's MLA
needs a norm fused into linear_q_proj that the model has not. The weights of those still
convert when their tensors exist; `build_gpt` refuses the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from streamrl.models import ModelConfig
from streamrl.models.rope import Llama3Rope

_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attn.q_norm.weight": "self_attention.q_layernorm.weight",
    "self_attn.k_norm.weight": "self_attention.k_layernorm.weight",
    "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
    "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
}
_MLA_RENAMES = {
    "self_attn.kv_a_proj_with_mqa.weight": "self_attention.linear_kv_down_proj.weight",
    "self_attn.kv_a_layernorm.weight": "self_attention.kv_layernorm.weight",
    "self_attn.kv_b_proj.weight": "self_attention.linear_kv_up_proj.weight",
}
_MLA_Q_LORA = {
    "self_attn.q_a_proj.weight": "self_attention.linear_q_down_proj.weight",
    "self_attn.q_a_layernorm.weight": "self_attention.q_layernorm.weight",
    "self_attn.q_b_proj.weight": "self_attention.linear_q_up_proj.weight",
}
_MLA_Q_PLAIN = {"self_attn.q_proj.weight": "self_attention.linear_q_proj.weight"}
_GLOBAL_RENAMES = {
    "model.embed_tokens.weight": "embedding.word_embeddings.weight",
    "model.norm.weight": "decoder.final_layernorm.weight",
    "lm_head.weight": "output_layer.weight",
}


def _check_supported(config: ModelConfig) -> None:
    if config.o_bias or config.mlp_bias:
        raise ValueError(
            f"{config.model_type} with `attention_bias` or `mlp_bias` is not mapped to megatron: "
            "its add_bias_linear biases every linear layer at once (use the torch backend)")


def megatron_unsupported(config: ModelConfig) -> str | None:
    """Why megatron-core's GPTModel (local spec) cannot compute `config`'s model, or None."""
    if config.o_bias or config.mlp_bias:
        return "biases on o_proj or the MLP (`attention_bias` / `mlp_bias`)"
    if (config.sliding_window is not None
            and config.sliding_window < config.max_position_embeddings):
        return (f"a sliding window ({config.sliding_window}) shorter than "
                f"max_position_embeddings; megatron's local attention has none")
    return _rope_unsupported(config) or _router_unsupported(config)


def _rope_unsupported(config: ModelConfig) -> str | None:
    s = config.rope_scaling
    if config.is_mla and config.q_lora_rank is None:
        return ("MLA without `q_lora_rank` (a plain q_proj): megatron-core 0.19's MLA then wants "
                "a norm fused before linear_q_proj, which DeepSeek has not, or drops the kv "
                "latent norm")
    if config.is_mla and not config.rope_interleave:
        return ("`rope_interleave = false` with MLA: megatron's MLA rotates interleaved pairs "
                "(2i, 2i + 1) only")
    if isinstance(s, Llama3Rope):
        if config.is_mla:
            return "llama3 rope scaling with MLA (megatron's MLA takes plain RoPE or YaRN)"
        if (s.low_freq_factor, s.high_freq_factor,
                s.original_max_position_embeddings) != (1.0, 4.0, 8192):
            return ("llama3 rope scaling with low_freq_factor/high_freq_factor/"
                    "original_max_position_embeddings other than 1/4/8192 (megatron's fixed "
                    "values)")
        return None
    if s is None:
        return None
    # YaRN (rope.py's YarnRope): only MLA's YarnRotaryEmbedding takes it, with these settings.
    if not config.is_mla:
        return "YaRN rope scaling outside MLA (megatron applies YaRN's scales in MLA only)"
    if not s.truncate:
        return "YaRN `truncate = false` (megatron always rounds the blend range to whole pairs)"
    if s.attention_factor is not None:
        return "YaRN with an explicit `attention_factor` (megatron derives it from the mscales)"
    if s.mscale_all_dim and not s.mscale:
        return ("YaRN with `mscale_all_dim` but no `mscale` (megatron's cos/sin factor would be "
                "m(factor, 1) / m(factor, mscale_all_dim), transformers' m(factor, 1))")
    return None


def _router_unsupported(config: ModelConfig) -> str | None:
    if not config.deepseek_moe:
        return None
    k = config.num_experts_per_tok
    if config.norm_topk_prob != (k > 1):
        return (f"`norm_topk_prob = {str(config.norm_topk_prob).lower()}` with "
                f"num_experts_per_tok = {k}: megatron's sigmoid router renormalizes the top k "
                f"exactly when k > 1")
    if groups_matter(config) and k != 2 * config.topk_group:
        return (f"group-limited routing with num_experts_per_tok / topk_group = {k} / "
                f"{config.topk_group} != 2 (megatron ranks a group by its best k / topk_group "
                f"scores, transformers by its best 2)")
    return None


def groups_matter(config: ModelConfig) -> bool:
    """Whether group-limited top-k can exclude an expert (otherwise it is plain top-k)."""
    return config.deepseek_moe and config.n_group > 1 and config.topk_group < config.n_group


def hf_to_megatron(hf: Mapping[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """HF-named tensors -> megatron GPTModel names. Raises ValueError naming missing or
    unexpected tensors; a tied model's `lm_head.weight`, if present, is ignored."""
    _check_supported(config)
    expected = set(megatron_shapes(config))
    names = set(hf) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    want_hf = set(hf_names(config))
    if names != want_hf:
        raise ValueError(_diff("HF weights", names, want_hf))
    out: dict[str, Tensor] = {}
    for hf_name, mg_name in _GLOBAL_RENAMES.items():
        if mg_name in expected:
            out[mg_name] = hf[hf_name]
    for i in range(config.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        for a, b in _layer_renames(config):
            out[dst + b] = hf[src + a]
        if not config.is_mla:  # MLA's projections are all renames
            out |= _fuse_qkv({n[len(src):]: t for n, t in hf.items() if n.startswith(src)},
                             config, dst)
        for hf_mlp, mg_mlp in _mlp_pairs(config, i):
            out[dst + mg_mlp + "linear_fc1.weight"] = torch.cat(
                [hf[src + hf_mlp + "gate_proj.weight"], hf[src + hf_mlp + "up_proj.weight"]])
            out[dst + mg_mlp + "linear_fc2.weight"] = hf[src + hf_mlp + "down_proj.weight"]
        for a, b in _moe_renames(config, i):
            out[dst + b] = hf[src + a]
    _check_shapes(out, megatron_shapes(config), "megatron")
    return out


def _fuse_qkv(layer: Mapping[str, Tensor], config: ModelConfig, dst: str) -> dict[str, Tensor]:
    """One layer's q/k/v weights (and biases) as megatron's per-group linear_qkv."""
    G, D = config.num_key_value_heads, config.head_dim
    per_group = config.num_attention_heads // G
    q = layer["self_attn.q_proj.weight"].reshape(G, per_group * D, -1)
    k = layer["self_attn.k_proj.weight"].reshape(G, D, -1)
    v = layer["self_attn.v_proj.weight"].reshape(G, D, -1)
    out = {dst + "self_attention.linear_qkv.weight": torch.cat([q, k, v], dim=1).reshape(
        G * (per_group + 2) * D, -1)}
    if config.qkv_bias:
        qb = layer["self_attn.q_proj.bias"].reshape(G, per_group * D)
        kb = layer["self_attn.k_proj.bias"].reshape(G, D)
        vb = layer["self_attn.v_proj.bias"].reshape(G, D)
        out[dst + "self_attention.linear_qkv.bias"] = torch.cat([qb, kb, vb], 1).reshape(-1)
    return out


def _split_qkv(mg: Mapping[str, Tensor], src: str, config: ModelConfig,
               dst: str) -> dict[str, Tensor]:
    """The inverse of `_fuse_qkv` for one layer."""
    G, D = config.num_key_value_heads, config.head_dim
    per_group = config.num_attention_heads // G
    out = {}
    qkv = mg[src + "self_attention.linear_qkv.weight"].reshape(G, (per_group + 2) * D, -1)
    q, k, v = qkv.split([per_group * D, D, D], dim=1)
    out[dst + "self_attn.q_proj.weight"] = q.reshape(G * per_group * D, -1)
    out[dst + "self_attn.k_proj.weight"] = k.reshape(G * D, -1)
    out[dst + "self_attn.v_proj.weight"] = v.reshape(G * D, -1)
    if config.qkv_bias:
        qkv_b = mg[src + "self_attention.linear_qkv.bias"].reshape(G, (per_group + 2) * D)
        qb, kb, vb = qkv_b.split([per_group * D, D, D], dim=1)
        out[dst + "self_attn.q_proj.bias"] = qb.reshape(-1)
        out[dst + "self_attn.k_proj.bias"] = kb.reshape(-1)
        out[dst + "self_attn.v_proj.bias"] = vb.reshape(-1)
    return out


def megatron_to_hf(mg: Mapping[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Megatron GPTModel names -> HF names (the inverse of `hf_to_megatron`, exactly)."""
    _check_supported(config)
    names = {n for n in mg if not n.endswith("_extra_state")}
    want = set(megatron_shapes(config))
    if names != want:
        raise ValueError(_diff("megatron weights", names, want))
    _check_shapes({n: mg[n] for n in names}, megatron_shapes(config), "megatron")
    out: dict[str, Tensor] = {}
    for hf_name, mg_name in _GLOBAL_RENAMES.items():
        if mg_name in mg:
            out[hf_name] = mg[mg_name]
    for i in range(config.num_hidden_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        for a, b in _layer_renames(config):
            out[dst + a] = mg[src + b]
        if not config.is_mla:
            out |= _split_qkv(mg, src, config, dst)
        for hf_mlp, mg_mlp in _mlp_pairs(config, i):
            gate, up = mg[src + mg_mlp + "linear_fc1.weight"].chunk(2, dim=0)
            out[dst + hf_mlp + "gate_proj.weight"], out[dst + hf_mlp + "up_proj.weight"] = gate, up
            out[dst + hf_mlp + "down_proj.weight"] = mg[src + mg_mlp + "linear_fc2.weight"]
        for a, b in _moe_renames(config, i):
            out[dst + a] = mg[src + b]
    return {k: v.contiguous() for k, v in out.items()}


def _layer_renames(config: ModelConfig) -> list[tuple[str, str]]:
    """(HF, megatron) per-layer names that map one to one (q/k norms only where they exist;
    every MLA projection)."""
    pairs = [(a, b) for a, b in _LAYER_RENAMES.items()
             if config.qk_norm or not a.startswith(("self_attn.q_norm", "self_attn.k_norm"))]
    if config.is_mla:
        q = _MLA_Q_PLAIN if config.q_lora_rank is None else _MLA_Q_LORA
        pairs += [*q.items(), *_MLA_RENAMES.items()]
    return pairs


def _mlp_pairs(config: ModelConfig, layer: int) -> list[tuple[str, str]]:
    """(HF prefix, megatron prefix) of every SwiGLU MLP in decoder layer `layer`."""
    if layer not in config.moe_layers:
        return [("mlp.", "mlp.")]
    pairs = [(f"mlp.experts.{e}.", f"mlp.experts.local_experts.{e}.")
             for e in range(config.num_experts)]
    if config.deepseek_moe and config.n_shared_experts:
        pairs.append(("mlp.shared_experts.", "mlp.shared_experts."))
    elif config.shared_expert_intermediate_size:
        pairs.append(("mlp.shared_expert.", "mlp.shared_experts."))
    return pairs


def _moe_renames(config: ModelConfig, layer: int) -> list[tuple[str, str]]:
    """(HF, megatron) names of the router, its correction bias and the shared-expert gate of
    layer `layer`."""
    if layer not in config.moe_layers:
        return []
    names = [("mlp.gate.weight", "mlp.router.weight")]
    if config.deepseek_moe:
        names.append(("mlp.gate.e_score_correction_bias", "mlp.router.expert_bias"))
    elif config.shared_expert_intermediate_size:
        names.append(("mlp.shared_expert_gate.weight", "mlp.shared_experts.gate_weight"))
    return names


def hf_names(config: ModelConfig) -> list[str]:
    """Every HF tensor name of the model (no lm_head when tied; experts one by one)."""
    attention = ["input_layernorm.weight", "post_attention_layernorm.weight",
                 "self_attn.o_proj.weight"]
    if config.is_mla:
        attention += [hf for hf, _ in _layer_renames(config) if hf.startswith("self_attn.")
                      and hf != "self_attn.o_proj.weight"]
    else:
        attention += [f"self_attn.{p}_proj.weight" for p in "qkv"]
    if config.qk_norm:
        attention += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    if config.qkv_bias:
        attention += [f"self_attn.{p}_proj.bias" for p in "qkv"]
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(config.num_hidden_layers):
        per_layer = [*attention, *(hf + f"{p}_proj.weight" for hf, _ in _mlp_pairs(config, i)
                                   for p in ("gate", "up", "down")),
                     *(hf for hf, _ in _moe_renames(config, i))]
        names += [f"model.layers.{i}.{n}" for n in per_layer]
    return names + ([] if config.tie_word_embeddings else ["lm_head.weight"])


def megatron_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every megatron GPTModel parameter for `config` (local spec, TP = EP = 1)."""
    H, D = config.hidden_size, config.head_dim
    Q, G = config.num_attention_heads, config.num_key_value_heads
    shapes: dict[str, tuple[int, ...]] = {
        "embedding.word_embeddings.weight": (config.vocab_size, H),
        "decoder.final_layernorm.weight": (H,),
    }
    if not config.tie_word_embeddings:
        shapes["output_layer.weight"] = (config.vocab_size, H)
    for i in range(config.num_hidden_layers):
        p = f"decoder.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (H,), p + "pre_mlp_layernorm.weight": (H,)}
        if config.is_mla:
            shapes |= {p + n: s for n, s in _mla_shapes(config).items()}
        else:
            shapes |= {p + "self_attention.linear_qkv.weight": ((Q + 2 * G) * D, H),
                       p + "self_attention.linear_proj.weight": (H, Q * D)}
        if config.qk_norm:
            shapes |= {p + "self_attention.q_layernorm.weight": (D,),
                       p + "self_attention.k_layernorm.weight": (D,)}
        if config.qkv_bias:
            shapes[p + "self_attention.linear_qkv.bias"] = ((Q + 2 * G) * D,)
        for _, mg_mlp in _mlp_pairs(config, i):
            I = _width(config, mg_mlp)  # noqa: E741 - the usual name of the MLP width
            shapes |= {p + mg_mlp + "linear_fc1.weight": (2 * I, H),
                       p + mg_mlp + "linear_fc2.weight": (H, I)}
        if i in config.moe_layers:
            shapes[p + "mlp.router.weight"] = (config.num_experts, H)
            if config.deepseek_moe:
                shapes[p + "mlp.router.expert_bias"] = (config.num_experts,)
            elif config.shared_expert_intermediate_size:
                shapes[p + "mlp.shared_experts.gate_weight"] = (1, H)
    return shapes


def _mla_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """One MLA layer's attention parameters (no `decoder.layers.i.` prefix)."""
    H, N = config.hidden_size, config.num_attention_heads
    qk = config.qk_nope_head_dim + config.qk_rope_head_dim
    kv = config.kv_lora_rank
    assert kv is not None
    a = "self_attention."
    shapes = {a + "linear_kv_down_proj.weight": (kv + config.qk_rope_head_dim, H),
              a + "kv_layernorm.weight": (kv,),
              a + "linear_kv_up_proj.weight": (N * (config.qk_nope_head_dim + config.v_head_dim),
                                               kv),
              a + "linear_proj.weight": (H, N * config.v_head_dim)}
    if config.q_lora_rank is None:
        return shapes | {a + "linear_q_proj.weight": (N * qk, H)}
    return shapes | {a + "linear_q_down_proj.weight": (config.q_lora_rank, H),
                     a + "q_layernorm.weight": (config.q_lora_rank,),
                     a + "linear_q_up_proj.weight": (N * qk, config.q_lora_rank)}


def _width(config: ModelConfig, mg_mlp: str) -> int:
    if mg_mlp.startswith("mlp.experts."):
        return config.moe_intermediate_size
    if mg_mlp == "mlp.shared_experts." and config.deepseek_moe:
        return config.n_shared_experts * config.moe_intermediate_size
    if mg_mlp == "mlp.shared_experts.":
        return config.shared_expert_intermediate_size
    return config.intermediate_size


def _check_shapes(tensors: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]],
                  what: str) -> None:
    bad = [f"{n}: {tuple(t.shape)} != {shapes[n]}" for n, t in tensors.items()
           if tuple(t.shape) != shapes[n]]
    if bad:
        raise ValueError(f"{what} tensors with the wrong shape for this config: "
                         + "; ".join(bad[:5]))


def _diff(what: str, got: set[str], want: set[str]) -> str:
    missing, extra = sorted(want - got), sorted(got - want)
    return (f"{what} do not match the config: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''}")
