"""Recorded MoE routing through megatron-core's built-in RouterReplay (`moe_enable_routing_replay`).

What megatron-core (0.19, megatron/core/transformer/moe/router_replay.py and moe_utils.py)
does: with `TransformerConfig(moe_enable_routing_replay=True)` every TopKRouter owns a
`RouterReplay` (`router.router_replay`). Under action REPLAY_FORWARD the router takes the ids
given by `set_target_indices` (`[num_tokens, top_k]`) and gathers its own scores there
(`scores.gather(1, ids)`, then the usual softmax over the k), so the gates stay differentiable;
RECORD stores the router's own choice; no action routes freely. Tokens are in megatron's order:
router logits are `[S, B, E]` viewed as `[S * B, E]`, sequence-major. The fused router path
(`moe_router_fusion=True`) bypasses replay: `model.py` keeps it off.

Two differences from our torch backend, both handled here: megatron has no mask, so positions
without a record (prompt, last token, padding) get the router's own choice from a RECORD pass
first (causal attention makes that choice the one a free pass would make at every position that
is scored); and our batch is `[B, S, num_moe_layers, top_k]`, batch-major.

megatron also keeps a class-level list of every RouterReplay ever built
(`RouterReplay.global_router_replay_instances`, which its static helpers drive); `model.py`
clears it after building a model and this module drives the model's own instances, so two
models (a trainer and a reference) never replay each other's routing.
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


def router_replays(model: torch.nn.Module) -> list[Any]:
    """The model's RouterReplay instances, one per MoE layer in layer order."""
    return [m.router_replay for m in model.modules()
            if getattr(m, "router_replay", None) is not None]


@contextmanager
def replaying(model: torch.nn.Module, record: Callable[[], Any], forced_routing: Tensor,
              routing_mask: Tensor) -> Iterator[None]:
    """Inside the block, `model`'s MoE layers use the batch's recorded routing where
    `routing_mask` is True. `record()` runs the model once (without grad) to record the
    router's own choice at unrecorded positions. Forwards inside the block see the same ids
    (one micro-batch per block); backward needs none (no activation recomputation here)."""
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    replays = router_replays(model)
    if not replays:
        raise ValueError("forced routing given, but the model has no replaying MoE router "
                         "(build it with moe_enable_routing_replay=True)")
    try:
        for r in replays:
            r.set_router_replay_action(RouterReplayAction.RECORD)
        with torch.no_grad():
            record()
        own = [r.get_recorded_indices().clone() for r in replays]
        ids = replay_indices(forced_routing, routing_mask, own)
        for r, layer_ids in zip(replays, ids, strict=True):
            r.clear_indices()
            r.set_target_indices(layer_ids)
            r.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)
        yield
    finally:
        for r in replays:
            r.clear_router_replay_action()
            r.clear_indices()


@contextmanager
def routing_maps(model: torch.nn.Module) -> Iterator[list[Tensor]]:
    """Captures, for every forward inside the block (RECORD passes included), which experts
    each token was actually sent to: one `[S * B, num_moe_layers, num_experts]` bool tensor per
    forward, in megatron's sequence-major token order (`batch_major` turns it into ours). Read
    from the routers' routing maps, so it shows replayed routing too."""
    maps: list[Tensor] = []
    layers: list[Tensor] = []
    routers = [m for m in model.modules() if getattr(m, "router_replay", None) is not None]

    def hook(_m: Any, _i: Any, out: tuple[Tensor, Tensor]) -> None:
        layers.append(out[1].detach())  # [S * B, E] routing map of one MoE layer
        if len(layers) == len(routers):
            maps.append(torch.stack(layers, dim=1))
            layers.clear()

    handles = [r.register_forward_hook(hook) for r in routers]
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()


def batch_major(routing_map: Tensor, batch_size: int) -> Tensor:
    """`[S * B, L, E]` (megatron's token order) -> `[B, S, L, E]` (ours)."""
    SB, L, E = routing_map.shape
    return routing_map.view(SB // batch_size, batch_size, L, E).transpose(0, 1)
