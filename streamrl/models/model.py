"""The decoder (every family of `config.FAMILIES`, dense and MoE) used by both the rollout
engine and the trainer. Families differ only in switches read from the config (q/k norm,
biases, rope scaling, partial rotary, sliding window, the MoE router's style, multi-head latent
attention); there is one class per role, not per family.

One forward serves both roles; what differs is only what the caller passes:

- Training / scoring: `forward(tokens, positions)`. Rows may be right-padded or pack several
  sequences back to back (positions restart at each sequence; see `segment_causal_mask`). Pass
  `return_hidden=True` and use `token_logprobs` to get per-token logprobs without a [B, T, V]
  logits tensor.
- Generation: `forward(tokens, positions, kv_cache=cache, slots=...)` on a `KVCache`; prefill
  and decode are the same call with T > 1 or T == 1.

Parameter names equal the HF checkpoint names except the stacked MoE experts (see
`checkpoint.py`), so weight sync to other engines needs no renaming table.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from streamrl.models.attention import Attention, segment_causal_mask
from streamrl.models.config import ModelConfig
from streamrl.models.kv_cache import CacheStep, KVCache
from streamrl.models.layers import MLP, RMSNorm, RotaryEmbedding
from streamrl.models.mla import MLAttention
from streamrl.models.moe import MoE


class ModelOutput(NamedTuple):
    logits: Tensor | None
    """[B, T, vocab] fp32-or-model-dtype logits; None when `return_hidden` was set."""
    hidden: Tensor | None
    """[B, T, hidden] final-norm hidden states; set only when `return_hidden` was set."""
    routed_experts: Tensor | None
    """[B, T, num_moe_layers, top_k] int32 expert ids per token; None for dense models."""


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = (MLAttention if config.is_mla else Attention)(config, layer_idx)
        self.is_moe = layer_idx in config.moe_layers
        self.mlp: MLP | MoE = (
            MoE(config) if self.is_moe
            else MLP(config.hidden_size, config.intermediate_size, config.mlp_bias)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: CacheStep | None,
        forced_ids: Tensor | None,
        forced_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        # x: [B, T, hidden]
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            out, ids = self.mlp(h, forced_ids, forced_mask)
            return x + out, ids
        return x + self.mlp(h), None


class Qwen3Model(nn.Module):
    """Embedding, decoder layers and final norm: tokens -> hidden states (+ routed ids)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.rotary_dim, config.rope_theta, config.rope_scaling)
        self.checkpoint_above: int | None = None
        """Activation checkpointing for forwards with grad enabled whose rows are longer than
        this many tokens (0: every such forward; None: never): keep only each layer's input and
        recompute the layer in backward (about 1/3 more compute for a fraction of the memory)."""

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        *,
        cache: CacheStep | None = None,
        forced_routing: Tensor | None = None,
        routing_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        # tokens, positions: [B, T]; forced_routing: [B, T, num_moe_layers, top_k] or None
        # -> hidden: [B, T, hidden], routed: [B, T, num_moe_layers, top_k] int32 or None
        if tokens.shape != positions.shape or tokens.dim() != 2:
            raise ValueError(
                f"tokens and positions must both be [B, T], got {list(tokens.shape)} "
                f"and {list(positions.shape)}"
            )
        num_moe = self.config.num_moe_layers
        if forced_routing is not None and num_moe == 0:
            raise ValueError("forced_routing given, but this model has no MoE layers")
        if forced_routing is not None and (
            forced_routing.dim() != 4 or forced_routing.shape[2] != num_moe
        ):
            raise ValueError(
                f"forced_routing must be [B, T, {num_moe}, top_k] (one entry per MoE layer), "
                f"got {list(forced_routing.shape)}"
            )
        x = self.embed_tokens(tokens)
        cos, sin = self.rotary(positions, x.dtype)
        window = self.config.sliding_window
        mask = (segment_causal_mask(positions, window) if cache is None
                else cache.attention_mask(window))
        routed: list[Tensor] = []
        recompute = (self.checkpoint_above is not None and tokens.shape[1] > self.checkpoint_above
                     and cache is None and torch.is_grad_enabled())
        for layer in self.layers:
            forced = None
            if forced_routing is not None and layer.is_moe:
                forced = forced_routing[:, :, len(routed)]
            if recompute:
                x, ids = checkpoint(layer, x, cos, sin, mask, cache, forced, routing_mask,
                                    use_reentrant=False)
            else:
                x, ids = layer(x, cos, sin, mask, cache, forced, routing_mask)
            if ids is not None:
                routed.append(ids)
        return self.norm(x), (torch.stack(routed, dim=2) if routed else None)


class CausalLM(nn.Module):
    """Decoder plus LM head. Build from a checkpoint with `checkpoint.load_checkpoint`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the LM head when the config says so (call again
        after replacing parameters, e.g. `load_state_dict(assign=True)`)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        *,
        kv_cache: KVCache | None = None,
        slots: Tensor | None = None,
        forced_routing: Tensor | None = None,
        routing_mask: Tensor | None = None,
        return_hidden: bool = False,
    ) -> ModelOutput:
        """Run the decoder on `tokens` at `positions` (each token's position in its sequence).

        With `kv_cache`, row b is the sequence in cache slot `slots[b]` (default: slot b); the
        new tokens' k/v are stored at their positions and every query attends to its slot's
        cache up to its own position. `forced_routing` ([B, T, num_moe_layers, top_k]) replays
        recorded expert choices (see `moe.py`); with `routing_mask` ([B, T] bool) only where the
        mask is True. `return_hidden` skips the LM head.
        """
        # tokens, positions: [B, T]; slots: [B] or None
        if slots is not None and kv_cache is None:
            raise ValueError("slots only make sense together with kv_cache")
        cache = kv_cache.step(positions, slots) if kv_cache is not None else None
        hidden, routed = self.model(tokens, positions, cache=cache, forced_routing=forced_routing,
                                    routing_mask=routing_mask)
        if return_hidden:
            return ModelOutput(logits=None, hidden=hidden, routed_experts=routed)
        return ModelOutput(logits=self.lm_head(hidden), hidden=None, routed_experts=routed)

    def logits(self, hidden: Tensor) -> Tensor:
        """LM head on chosen hidden states, e.g. only each row's last token during prefill."""
        # hidden: [..., hidden] -> [..., vocab]
        return self.lm_head(hidden)
