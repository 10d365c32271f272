"""Parameter counts from a `ModelShape`: total, active per token, and the split the parallel
layout needs (replicated vs tensor-sharded vs expert-sharded), per layer.

Per decoder layer (h = hidden, H = heads, K = kv heads, d = head dim, I = dense width,
E = routed experts, k = experts per token, I_e = expert width, I_s = shared width):

    GQA attention   h*H*d (q) + 2*h*K*d (k, v) + H*d*h (o), + biases, + 2*d for q/k norm
    MLA attention   h*r_q + r_q + r_q*H*(d_nope + d_rope)     (q through its low rank r_q)
                    + h*(r_kv + d_rope) + r_kv                 (latent c_kv and shared rotary key)
                    + r_kv*H*(d_nope + d_v) + H*d_v*h          (k/v decompression, o)
    norms           2*h
    dense MLP       3*h*I                                      (SwiGLU gate, up, down)
    MoE MLP         E*3*h*I_e (routed) + 3*h*I_s (shared) + E*h (router) [+ E correction bias]

plus the embedding V*h and the LM head V*h (absent when tied) and the final norm h.
Active per token counts k routed experts instead of E. Vendors publish active sizes two ways:
Qwen and DeepSeek/Kimi count the embedding and LM head, Zhipu (GLM-4.5) does not; `ParamCounts`
gives both (`active`, `active_non_embedding`).
"""

from __future__ import annotations

import msgspec

from streamrl.plan.shape import ModelShape


class LayerParams(msgspec.Struct, kw_only=True, frozen=True):
    attention: int
    """q/k/v/o (or MLA's projections) with their biases and per-head norms: tensor-sharded."""
    norms: int
    """The two RMSNorms: replicated on every tensor rank."""
    mlp: int
    """The dense SwiGLU (dense layers only): tensor-sharded."""
    routed: int
    """All routed experts of the layer: expert-sharded."""
    expert: int
    """One routed expert."""
    shared: int
    """Shared expert(s) and their gate: tensor-sharded."""
    router: int
    """Router weight and correction bias: replicated."""
    top_k: int

    @property
    def total(self) -> int:
        return self.attention + self.norms + self.mlp + self.routed + self.shared + self.router

    @property
    def active(self) -> int:
        return self.total - self.routed + self.top_k * self.expert

    @property
    def dense(self) -> int:
        """Everything but the routed experts (what data parallelism replicates)."""
        return self.total - self.routed


class ParamCounts(msgspec.Struct, kw_only=True, frozen=True):
    embedding: int
    lm_head: int
    final_norm: int
    layers: tuple[LayerParams, ...]

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.final_norm + sum(x.total for x in self.layers)

    @property
    def active(self) -> int:
        return self.embedding + self.lm_head + self.final_norm + sum(x.active for x in self.layers)

    @property
    def active_non_embedding(self) -> int:
        return self.active - self.embedding - self.lm_head

    @property
    def routed(self) -> int:
        return sum(x.routed for x in self.layers)


def attention_params(s: ModelShape) -> int:
    h, heads = s.hidden_size, s.num_heads
    if s.attention == "mla":
        qk = s.qk_nope_head_dim + s.qk_rope_head_dim
        if s.q_lora_rank:
            q = h * s.q_lora_rank + s.q_lora_rank + s.q_lora_rank * heads * qk
        else:
            q = h * heads * qk
        kv = (h * (s.kv_lora_rank + s.qk_rope_head_dim) + s.kv_lora_rank
              + s.kv_lora_rank * heads * (s.qk_nope_head_dim + s.v_head_dim))
        return q + kv + heads * s.v_head_dim * h
    q, kv = heads * s.head_dim, s.num_kv_heads * s.head_dim
    weights = h * q + 2 * h * kv + q * h
    bias = (q + 2 * kv) * s.qkv_bias + h * s.o_bias
    return weights + bias + 2 * s.head_dim * s.qk_norm


def layer_params(s: ModelShape, index: int) -> LayerParams:
    h = s.hidden_size
    attention, norms = attention_params(s), 2 * h
    if index not in s.moe_layers:
        mlp = 3 * h * s.intermediate_size + (2 * s.intermediate_size + h) * s.mlp_bias
        return LayerParams(attention=attention, norms=norms, mlp=mlp, routed=0, expert=0,
                           shared=0, router=0, top_k=0)
    expert = 3 * h * s.moe_intermediate_size
    shared = 3 * h * s.shared_intermediate_size + h * s.shared_gate
    router = s.num_experts * h + s.num_experts * s.router_bias
    return LayerParams(attention=attention, norms=norms, mlp=0, routed=s.num_experts * expert,
                       expert=expert, shared=shared, router=router, top_k=s.top_k)


def count_params(s: ModelShape) -> ParamCounts:
    """Every parameter of the checkpoint's main model (multi-token-prediction layers excluded)."""
    embedding = s.vocab_size * s.hidden_size
    return ParamCounts(embedding=embedding, lm_head=0 if s.tie_word_embeddings else embedding,
                       final_norm=s.hidden_size,
                       layers=tuple(layer_params(s, i) for i in range(s.num_layers)))
