"""Our model computes what transformers computes for the same checkpoint."""

from __future__ import annotations

import torch

from streamrl.models import load_checkpoint
from tests.models.tiny import ATOL, Tiny, batch


def reference_routing(ref: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Expert ids transformers' routers pick: [B, T, num_moe_layers, top_k]."""
    picked: list[torch.Tensor] = []
    routers = [m for m in ref.modules() if type(m).__name__ == "Qwen3MoeTopKRouter"]
    hooks = [r.register_forward_hook(lambda _m, _i, out: picked.append(out[2])) for r in routers]
    try:
        with torch.no_grad():
            ref(tokens)
    finally:
        for h in hooks:
            h.remove()
    B, T = tokens.shape
    return torch.stack([p.view(B, T, -1) for p in picked], dim=2)


def test_logits_match_transformers(tiny: Tiny) -> None:
    model = load_checkpoint(tiny.path)
    tokens, positions = batch(3, 40)
    with torch.no_grad():
        ours = model(tokens, positions).logits
        ref = tiny.ref(tokens).logits
    assert ours.shape == ref.shape == (3, 40, 300)
    assert (ours - ref).abs().max().item() <= ATOL
    # The models disagree on what comes next (logits are not near-constant), so the match is
    # meaningful.
    assert ref.std(dim=-1).min() > 0.1


def test_routed_experts_match_transformers_router(moe: Tiny, moe_sparse_step: Tiny) -> None:
    for tiny in (moe, moe_sparse_step):
        model = load_checkpoint(tiny.path)
        tokens, positions = batch(2, 32, seed=5)
        with torch.no_grad():
            routed = model(tokens, positions).routed_experts
        expected = reference_routing(tiny.ref, tokens)
        assert routed is not None and routed.dtype == torch.int32
        c = model.config
        assert routed.shape == (2, 32, c.num_moe_layers, c.num_experts_per_tok)
        assert torch.equal(routed.long(), expected)
        # Routing really varies across tokens, so equality is not trivially satisfied.
        assert len(torch.unique(routed[..., 0])) > 2


def test_dense_model_reports_no_routing(dense: Tiny) -> None:
    tokens, positions = batch(1, 8)
    with torch.no_grad():
        assert load_checkpoint(dense.path)(tokens, positions).routed_experts is None


def test_forward_is_deterministic(moe: Tiny) -> None:
    model = load_checkpoint(moe.path)
    tokens, positions = batch(2, 24)
    with torch.no_grad():
        a, b = model(tokens, positions), model(tokens, positions)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.routed_experts, b.routed_experts)
