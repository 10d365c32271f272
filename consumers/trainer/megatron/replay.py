"""Recorded MoE routing for megatron-core's built-in RouterReplay (`moe_enable_routing_replay`).

What megatron-core (0.19, megatron/core/transformer/moe/router_replay.py and moe_utils.py)
does: with `TransformerConfig(moe_enable_routing_replay=True)` every TopKRouter owns a
`RouterReplay`, registered in a class-level list in construction order (one per MoE layer).
`RouterReplay.set_replay_data([idx_layer0, ...])` hands each layer a `[num_tokens, top_k]` index
tensor; under action REPLAY_FORWARD the router takes those ids and gathers its own scores there
(`scores.gather(1, ids)`, then the usual softmax), so the gates stay differentiable; REPLAY_BACKWARD
pops the same ids again for activation recomputation; RECORD stores the router's own choice.
Tokens are in megatron's order: router logits are `[S, B, E]` viewed as `[S * B, E]`, sequence-
major. The fused router path (`moe_router_fusion=True`) bypasses replay: keep it off.

Two differences from our torch backend, both handled here: megatron has no mask, so positions
without a record (prompt, last token, padding) get the router's own choice from a RECORD pass
first; and our batch is `[B, S, num_moe_layers, top_k]`, batch-major.

Status: `replay_indices` is pure and tested on CPU. `replaying` needs megatron-core and a MoE
GPTModel, which the megatron backend does not build yet (`build_gpt` is dense-only); it has not
run. What is left is in docs/routing-replay.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor


def replay_indices(forced_routing: Tensor, routing_mask: Tensor, own: list[Tensor]) -> list[Tensor]:
    """Per MoE layer, the `[S * B, top_k]` ids megatron should use: recorded where
    `routing_mask` is True, the router's own (`own[layer]`, from a RECORD pass) elsewhere."""
    # forced_routing: [B, S, L, k] int; routing_mask: [B, S] bool; own: L x [S*B, k]
    B, S, L, k = forced_routing.shape
    if routing_mask.shape != (B, S):
        raise ValueError(f"routing_mask must be [{B}, {S}], got {list(routing_mask.shape)}")
    if len(own) != L:
        raise ValueError(f"{len(own)} RouterReplay instances recorded, the batch has {L} MoE "
                         "layers: was the model built with every MoE layer replaying?")
    mask = routing_mask.transpose(0, 1).reshape(S * B, 1)
    out = []
    for layer, recorded in enumerate(own):
        if recorded.shape != (S * B, k):
            raise ValueError(f"layer {layer}: recorded ids are {list(recorded.shape)}, "
                             f"expected [{S * B}, {k}] (S * B tokens, top-k)")
        ids = forced_routing[:, :, layer].transpose(0, 1).reshape(S * B, k)
        out.append(torch.where(mask.to(recorded.device), ids.to(recorded), recorded))
    return out


@contextmanager
def replaying(forward: Callable[[], Any], forced_routing: Tensor, routing_mask: Tensor
              ) -> Iterator[None]:
    """Inside the block, megatron MoE layers replay the batch's routing in forward and in
    backward recomputation. `forward()` runs the model once without grad to record the
    router's own choice at unrecorded positions. One micro-batch per block: REPLAY_FORWARD reads
    the same ids again when activations are recomputed in backward (REPLAY_BACKWARD, which pops
    one set per forward, is for several micro-batches set up front)."""
    from megatron.core.transformer.moe.router_replay import RouterReplay, RouterReplayAction

    try:
        RouterReplay.set_global_router_replay_action(RouterReplayAction.RECORD)
        with torch.no_grad():
            forward()
        own = [t.clone() for t in RouterReplay.get_recorded_data()]
        RouterReplay.clear_global_indices()
        RouterReplay.set_replay_data(replay_indices(forced_routing, routing_mask, own))
        RouterReplay.set_global_router_replay_action(RouterReplayAction.REPLAY_FORWARD)
        yield
    finally:
        RouterReplay.clear_global_router_replay_action()
        RouterReplay.clear_global_indices()
