"""Routing replay end to end: routing as SGLang returns it, decoded into our column, through the
log's Arrow record and the trainer's batch, forced in forward and backward.

The recorded experts are deliberately not the ones the trainer's router would pick (shifted by 3),
so a test that passed while the record were ignored is impossible. The router must still learn:
its gate weights are the trainer's own softmax probabilities at the recorded ids."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import numpy as np
import torch

from streamrl.consumers.trainer.batch import build_batch
from streamrl.models import CausalLM, ModelConfig, token_logprobs
from streamrl.models.moe import MoE
from streamrl.producers.sglang import convert
from streamrl.schemas import Sample, decode_trajectories, encode_trajectories, samples_to_batch

CONFIG = ModelConfig(model_type="qwen3_moe", vocab_size=64, hidden_size=32, intermediate_size=48,
                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=8, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                     norm_topk_prob=True, mlp_only_layers=(1,))
P, R = 5, 6


def model() -> CausalLM:
    torch.manual_seed(0)
    m = CausalLM(CONFIG).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def recorded_batch(m: CausalLM):
    """A trajectory whose response routing came from SGLang, shifted away from m's own."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, CONFIG.vocab_size, (P + R,), generator=g)
    with torch.no_grad():
        own = m(tokens[None], torch.arange(P + R)[None]).routed_experts[0]  # [P+R, L_moe, k]
    sglang = np.zeros((P + R - 1, CONFIG.num_hidden_layers, 2), np.int32)  # dense rows: 0
    shifted = (own.numpy() + 3) % CONFIG.num_experts
    sglang[:, list(CONFIG.moe_layers)] = shifted[: P + R - 1]
    start = P - 1  # what the adapter asks for: routed_experts_start_len = P - 1
    encoded = base64.b64encode(sglang[start:].tobytes()).decode()
    routed = convert.routed_experts(
        encoded, num_prompt_tokens=P, num_response_tokens=R, start_len=start,
        num_hidden_layers=CONFIG.num_hidden_layers, moe_layers=CONFIG.moe_layers, top_k=2,
        num_experts=CONFIG.num_experts)
    now = datetime.now(UTC)
    sample = Sample(
        run_id="r", sample_id="s0", group_id="g", prompt_id="p", sample_index=0,
        producer_id="sglang", policy_version=0, prompt_tokens=tokens[:P].numpy().astype(np.int32),
        response_tokens=tokens[P:].numpy().astype(np.int32), logprobs=np.full(R, -1.0, np.float32),
        loss_mask=np.ones(R, bool), reward=1.0, finish_reason="length", seed=0, started_at=now,
        finished_at=now, routed_experts=routed)
    record = decode_trajectories(encode_trajectories(samples_to_batch([sample])))
    return build_batch([record]), own, shifted


def loss_of(m: CausalLM, batch, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy-gradient-shaped loss -sum log p(response); `exact` keeps float64 throughout
    (token_logprobs computes in fp32, too coarse for a finite difference)."""
    out = m(batch.tokens, batch.positions, forced_routing=batch.forced_routing,
            routing_mask=batch.routing_mask, return_hidden=True)
    if exact:
        logp = (out.hidden @ m.lm_head.weight.T).log_softmax(-1)
        logp = logp.gather(-1, batch.targets[..., None]).squeeze(-1)
    else:
        logp, _ = token_logprobs(out.hidden, m.lm_head.weight, batch.targets)
    return -(logp * batch.loss_mask).sum(), out.routed_experts


def test_recorded_routing_is_forced_and_the_router_still_gets_gradients() -> None:
    m = model()
    batch, own, shifted = recorded_batch(m)
    loss, routed = loss_of(m, batch)
    mask = batch.routing_mask[0]
    # Response token i is scored at position P-1+i: exactly the SGLang rows we recorded.
    assert mask.nonzero().squeeze(-1).tolist() == list(range(P - 1, P + R - 1))
    # The record keeps each top-k as a set (ids ascending, schemas/routing_pack.py): compare sets.
    recorded = torch.from_numpy(np.sort(shifted[P - 1: P + R - 1], -1)).int()
    assert torch.equal(routed[0, mask], recorded)
    assert not torch.equal(routed[0, mask], own[mask].sort(-1).values.int())  # forcing changed it
    assert torch.equal(routed[0, : P - 1], own[: P - 1].int())  # prompt positions route freely
    loss.backward()
    routers = [mod.gate.weight for mod in m.modules() if isinstance(mod, MoE)]
    assert len(routers) == 2
    assert all(w.grad is not None and float(w.grad.abs().sum()) > 0 for w in routers)


def test_router_gradients_are_the_true_derivative_of_the_replayed_loss() -> None:
    """A central difference along a random direction of every router matches grad . d, and the
    perturbed forward still uses the recorded experts: gradients flow through the gate weights
    of the recorded experts, not through a different routing. (The router softmax runs in fp32
    by design, hence eps 1e-3 and a 1% tolerance.)"""
    m = model()
    batch, _, shifted = recorded_batch(m)
    loss, _ = loss_of(m, batch, exact=True)
    loss.backward()
    routers = [mod.gate.weight for mod in m.modules() if isinstance(mod, MoE)]
    g = torch.Generator().manual_seed(2)
    dirs = [torch.randn(w.shape, generator=g, dtype=w.dtype) for w in routers]
    predicted = sum(float((w.grad * d).sum()) for w, d in zip(routers, dirs, strict=True))
    eps, values = 1e-3, []
    for sign in (1, -1):
        with torch.no_grad():
            for w, d in zip(routers, dirs, strict=True):
                w.add_(sign * eps * d)
            value, routed = loss_of(m, batch, exact=True)
            for w, d in zip(routers, dirs, strict=True):
                w.sub_(sign * eps * d)
        values.append(float(value))
        assert torch.equal(routed[0, batch.routing_mask[0]],
                           torch.from_numpy(np.sort(shifted[P - 1: P + R - 1], -1)).int())
    measured = (values[0] - values[1]) / (2 * eps)
    assert abs(predicted) > 1e-3
    assert abs(measured - predicted) <= 1e-2 * abs(predicted)
