"""MoE routing replay and the Qwen2-MoE style shared expert."""

from __future__ import annotations

import pytest
import torch

from streamrl.models import CausalLM, ModelConfig, load_checkpoint, save_checkpoint
from streamrl.models.checkpoint import from_hf_names
from streamrl.models.moe import MoE
from tests.models.tiny import ATOL, Tiny, batch


def router_grads(model: CausalLM) -> list[torch.Tensor]:
    return [m.gate.weight.grad for m in model.modules() if isinstance(m, MoE)]


def test_replaying_own_routing_reproduces_forward_and_gradients(moe_sparse_step: Tiny) -> None:
    model = load_checkpoint(moe_sparse_step.path)
    tokens, positions = batch(2, 20, seed=3)
    free = model(tokens, positions)
    free.logits.logsumexp(-1).sum().backward()
    free_grads = [g.clone() for g in router_grads(model)]
    model.zero_grad()

    replay = model(tokens, positions, forced_routing=free.routed_experts)
    assert torch.equal(replay.logits, free.logits)
    assert torch.equal(replay.routed_experts, free.routed_experts)
    replay.logits.logsumexp(-1).sum().backward()
    for g_free, g_replay in zip(free_grads, router_grads(model), strict=True):
        assert torch.equal(g_free, g_replay)


def test_forced_routing_is_obeyed_and_router_still_learns(moe: Tiny) -> None:
    model = load_checkpoint(moe.path)
    tokens, positions = batch(2, 16, seed=4)
    with torch.no_grad():
        free = model(tokens, positions)
    # Shift every choice to other experts (still distinct per token).
    forced = (free.routed_experts + 3) % model.config.num_experts
    out = model(tokens, positions, forced_routing=forced)
    assert torch.equal(out.routed_experts, forced)
    assert (out.logits - free.logits).abs().max() > 1e-3
    out.logits.logsumexp(-1).sum().backward()
    grads = router_grads(model)
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_routing_mask_forces_only_the_recorded_positions(moe: Tiny) -> None:
    """Prompt tokens have no recorded routing: the router picks freely there, and the forward is
    exactly the free one at those positions while the masked-in positions obey the record."""
    model = load_checkpoint(moe.path)
    tokens, positions = batch(2, 16, seed=5)
    with torch.no_grad():
        free = model(tokens, positions)
        forced = (free.routed_experts + 3) % model.config.num_experts
        mask = torch.zeros(2, 16, dtype=torch.bool)
        mask[:, 10:] = True  # the "response" part
        out = model(tokens, positions, forced_routing=forced, routing_mask=mask)
    assert torch.equal(out.routed_experts[:, 10:], forced[:, 10:])
    assert torch.equal(out.routed_experts[:, :10], free.routed_experts[:, :10])
    # causal: earlier positions are unaffected (up to summation order inside the experts)
    assert torch.allclose(out.logits[:, :10], free.logits[:, :10], atol=ATOL, rtol=0)
    assert (out.logits[:, 10:] - free.logits[:, 10:]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("make_forced", "message"),
    [
        (lambda r: r[:, :, :, :1], r"\[2, 5, 2\]"),  # wrong top_k
        (lambda r: r + 100, r"\[0, 8\)"),  # ids out of range
        (lambda r: r.float(), "integers"),
        (lambda r: r[:, :, 0], "one entry per MoE layer"),
    ],
)
def test_bad_forced_routing_is_rejected(moe: Tiny, make_forced, message: str) -> None:
    model = load_checkpoint(moe.path)
    tokens, positions = batch(2, 5)
    with torch.no_grad():
        routed = model(tokens, positions).routed_experts
        with pytest.raises(ValueError, match=message):
            model(tokens, positions, forced_routing=make_forced(routed))


def test_shared_expert_matches_transformers_qwen2_moe_block() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    torch.manual_seed(0)
    hf_config = transformers.Qwen2MoeConfig(
        hidden_size=64,
        num_experts=6,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        norm_topk_prob=True,
    )
    ref = Qwen2MoeSparseMoeBlock(hf_config)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(std=0.1)
    config = ModelConfig(
        model_type="qwen3_moe",
        vocab_size=10,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        num_experts=6,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        norm_topk_prob=True,
    )
    ours = MoE(config)
    # transformers holds experts fused in memory ([E, 2I, H] gate_up): our loader takes it too.
    named = {f"m.mlp.{k}": v for k, v in ref.state_dict().items()}
    state = from_hf_names(named, config)
    ours.load_state_dict({k.removeprefix("m.mlp."): v for k, v in state.items()})
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        out, _ = ours(x)
        assert (out - ref(x)).abs().max() <= ATOL


def test_shared_expert_model_round_trips(tmp_path) -> None:
    config = ModelConfig(
        model_type="qwen3_moe",
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
    )
    torch.manual_seed(0)
    model = CausalLM(config)
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.config == config
    tokens, positions = batch(1, 6, vocab=50)
    with torch.no_grad():
        assert torch.equal(loaded(tokens, positions).logits, model(tokens, positions).logits)
