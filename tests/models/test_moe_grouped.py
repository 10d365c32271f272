"""Grouped expert compute (`streamrl.models.grouped`) against the per-expert loop: same forward,
same gradients (router included, free and replayed routing), no host sync on GPU."""

from __future__ import annotations

import pytest
import torch

from streamrl.models import CausalLM, load_checkpoint
from streamrl.models.moe import MoE, set_expert_impl
from tests.models.tiny import Tiny, batch

IMPLS = [("loop", None), ("grouped", "grouped_mm"), ("grouped", "padded")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls (tests/conftest.py)


def run(model: CausalLM, impl: str, backend: str | None, tokens, positions, forced=None):
    set_expert_impl(model, impl, backend)
    model.zero_grad()
    out = model(tokens, positions, forced_routing=forced)
    (out.logits.logsumexp(-1) * torch.linspace(0.5, 1.5, out.logits.shape[1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("replay", [False, True], ids=["free", "replay"])
def test_grouped_experts_match_the_loop(moe_sparse_step: Tiny, replay: bool) -> None:
    model = load_checkpoint(moe_sparse_step.path)
    tokens, positions = batch(2, 24, seed=5)
    forced = None
    if replay:  # someone else's routing: shifted choices, still distinct per token
        with torch.no_grad():
            forced = (model(tokens, positions).routed_experts + 1) % model.config.num_experts
    results = [run(model, impl, backend, tokens, positions, forced) for impl, backend in IMPLS]
    (ref, ref_grads), *others = results
    assert any(n.endswith("mlp.gate.weight") for n in ref_grads)  # the router is in the check
    for out, grads in others:
        assert torch.equal(out.routed_experts, ref.routed_experts)
        torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
        assert grads.keys() == ref_grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_experts_no_token_gets_nothing_and_unknown_impl_is_rejected(moe: Tiny) -> None:
    model = load_checkpoint(moe.path)
    layer = next(m for m in model.modules() if isinstance(m, MoE))
    x = torch.randn(1, 3, model.config.hidden_size)
    ids = torch.tensor([[[0, 1], [0, 1], [0, 1]]])  # experts 2.. receive no token
    outs = []
    with torch.no_grad():
        for impl, backend in IMPLS:
            set_expert_impl(model, impl, backend)
            outs.append(layer(x, forced_ids=ids)[0])
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="repeats an expert"):
        layer(x, forced_ids=torch.tensor([[[2, 2], [0, 1], [0, 1]]]))
    with pytest.raises(ValueError, match="unknown expert impl"):
        set_expert_impl(model, "fast")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("backend", [None, "padded"])
def test_grouped_experts_never_sync_and_capture_in_a_graph(moe_sparse_step: Tiny, backend) -> None:
    """bf16 on the GPU: no host sync in forward or backward, a deterministic backward, one CUDA
    graph replays the layer for any routing, and grouped vs loop agree to bf16 rounding (they
    sum in different orders)."""
    model = load_checkpoint(moe_sparse_step.path).to("cuda", torch.bfloat16)
    layer = next(m for m in model.modules() if isinstance(m, MoE))
    x = torch.randn(4, 16, model.config.hidden_size, device="cuda", dtype=torch.bfloat16,
                    requires_grad=True)
    set_expert_impl(model, "grouped", backend)
    layer(x)  # warm up (kernel compilation, allocator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, ids = layer(x)
        out.float().square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    grads = [x.grad.clone(), layer.gate.weight.grad.clone()]
    for _ in range(2):  # backward again: bitwise the same (no atomics race)
        x.grad, layer.gate.weight.grad = None, None
        layer(x)[0].float().square().sum().backward()
        assert torch.equal(x.grad, grads[0]) and torch.equal(layer.gate.weight.grad, grads[1])
    set_expert_impl(model, "loop")
    ref, ref_ids = layer(x)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)

    set_expert_impl(model, "grouped", backend)
    static = torch.randn_like(x).detach()
    with torch.no_grad():
        for _ in range(2):
            layer(static)  # warm up on a side stream's allocations
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured, captured_ids = layer(static)
        for seed in range(3):  # new inputs route differently; the graph follows
            static.copy_(torch.randn(static.shape, generator=torch.Generator().manual_seed(seed)))
            graph.replay()
            want, want_ids = layer(static)
            assert torch.equal(captured_ids, want_ids)
            assert torch.equal(captured, want)
