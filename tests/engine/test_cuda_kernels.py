"""The fused decode kernels against plain torch: decode attention vs a float64 reference over
actual lengths, the fused norm/rotary/KV-write/SwiGLU kernels vs the eager model's layers, and
the one-kernel sampler vs `sampling.sample`.

On CUDA the kernels run compiled; without a GPU they run under Triton's CPU interpreter
(TRITON_INTERPRET=1, set below before Triton builds them), so CI checks the same kernel code.
"""

from __future__ import annotations

import os

import pytest
import torch

# Must precede the kernels' import (Triton decides at build) and stay set (Triton reads it
# later too); without a GPU nothing else in the process uses Triton.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from streamrl.models.layers import RMSNorm, RotaryEmbedding, apply_rotary
from streamrl.producers.engine.cuda.attention import decode_attention, reference_attention
from streamrl.producers.engine.cuda.fused import add_rmsnorm, qk_norm_rope_cache, silu_mul
from streamrl.producers.engine.cuda.sampling import sample_untruncated
from streamrl.producers.engine.sampling import sample

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Relative error bounds (the usual bands for fp32 math and bf16 inputs/outputs). Triton's CPU
# interpreter truncates fp32 -> bf16 casts where compiled Triton rounds to nearest (measured: 1.3%
# on the chained roundings of norm + rotary), so its bf16 band is wider.
REL = {torch.float32: 1e-5, torch.bfloat16: 1e-2 if DEVICE == "cuda" else 3e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not out.isnan().any(), "an output element was never written"
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [1, 2, 4])
def test_decode_attention_matches_reference_over_actual_lengths(dtype, splits) -> None:
    # Paged: each sequence's blocks are scattered over the pool in a random order, and two
    # sequences share their first blocks (a group's prompt).
    g = torch.Generator().manual_seed(splits)
    S, Hkv, L, D, Hq, BS = 6, 2, 160, 16, 6, 16  # GQA group of 3: not a power of two
    per_seq = L // BS
    num_blocks = S * per_seq + 1
    k = torch.randn(num_blocks, BS, Hkv, D, generator=g).to(DEVICE, dtype)
    v = torch.randn(num_blocks, BS, Hkv, D, generator=g).to(DEVICE, dtype)
    tables = (1 + torch.randperm(S * per_seq, generator=g)).view(S, per_seq).to(DEVICE)
    tables[5, :3] = tables[4, :3]  # rows 0 and 2 below share three blocks
    # Lengths 1 (only its own token), exactly one tile, odd, the whole sequence.
    lengths = torch.tensor([1, 64, 97, 160, 33], device=DEVICE)
    rows = torch.tensor([4, 0, 5, 1, 3], device=DEVICE)
    q = torch.randn(len(rows), Hq, D, generator=g).to(DEVICE, dtype)
    # Garbage past each length must not matter: poison it (blocks nobody reads: all of them).
    used = set()
    for r, n in zip(rows.tolist(), lengths.tolist(), strict=True):
        used |= {(int(tables[r, p // BS]), p % BS) for p in range(n)}
    for b in range(num_blocks):
        for o in range(BS):
            if (b, o) not in used:
                k[b, o] = v[b, o] = float("nan")
    out = torch.full_like(q, float("nan"))
    decode_attention(q, k, v, tables, rows, lengths, splits=splits, out=out)
    assert rel_err(out, reference_attention(q, k, v, tables, rows, lengths)) < REL[dtype]


def test_decode_attention_rejects_mismatched_heads() -> None:
    q = torch.zeros(1, 3, 16, device=DEVICE)
    cache = torch.zeros(2, 8, 2, 16, device=DEVICE)
    zero = torch.zeros(1, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        decode_attention(q, cache, cache, zero[None], zero, torch.ones_like(zero))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_layers_match_the_eager_model(dtype) -> None:
    g = torch.Generator().manual_seed(1)
    n, H, Hq, Hkv, D, S, L, eps = 3, 96, 4, 2, 16, 4, 20, 1e-6
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE, dtype)  # noqa: E731
    # add + RMSNorm: the residual is updated in place, the norm of the sum returned.
    norm = RMSNorm(H, eps).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * rnd(H))
    x, delta = rnd(n, H), rnd(n, H)
    x_ref = x + delta
    y = add_rmsnorm(x, delta, norm.weight, eps)
    assert rel_err(x, x_ref) < REL[dtype] and rel_err(y, norm(x_ref)) < REL[dtype]

    # q/k norm + rotary + KV write at each row's (slot, position).
    qn, kn = RMSNorm(D, eps).to(DEVICE, dtype), RMSNorm(D, eps).to(DEVICE, dtype)
    with torch.no_grad():
        qn.weight.copy_(1 + 0.3 * rnd(D))
        kn.weight.copy_(1 + 0.3 * rnd(D))
    qkv = rnd(n, (Hq + 2 * Hkv) * D)
    # Paged pool of S blocks of L tokens: each row's k/v go to flat index dest = block*L + off.
    dest = torch.tensor([2 * L + 0, 0 * L + 7, 3 * L + 19], device=DEVICE)
    positions = torch.tensor([0, 7, 19], device=DEVICE)
    k_cache = torch.full((S, L, Hkv, D), float("nan"), dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    rope = RotaryEmbedding(D, 1e6)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, D, 2, dtype=torch.float32, device=DEVICE) / D))
    q = qk_norm_rope_cache(qkv, qn.weight, kn.weight, inv_freq, eps, k_cache, v_cache, dest,
                           positions, Hq)
    cos, sin = rope(positions[:, None], dtype)  # [n, 1, D]
    q_ref, k_ref, v_ref = qkv[:, None].split([Hq * D, Hkv * D, Hkv * D], dim=-1)
    q_ref = apply_rotary(qn(q_ref.view(n, 1, Hq, D)), cos, sin)[:, 0]
    k_ref = apply_rotary(kn(k_ref.view(n, 1, Hkv, D)), cos, sin)[:, 0]
    assert rel_err(q, q_ref) < REL[dtype]
    assert rel_err(k_cache.flatten(0, 1)[dest], k_ref) < REL[dtype]
    assert torch.equal(v_cache.flatten(0, 1)[dest], v_ref.reshape(n, Hkv, D))
    assert k_cache.isnan().sum() == k_cache.numel() - n * Hkv * D  # nothing else written

    gate_up = rnd(n, 2 * H)
    ref = torch.nn.functional.silu(gate_up[:, :H]) * gate_up[:, H:]
    assert rel_err(silu_mul(gate_up), ref) < REL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_kernel_sampler_matches_the_torch_sampler(dtype) -> None:
    g = torch.Generator().manual_seed(2)
    n, V = 32, 5000  # V spans two kernel blocks and a ragged tail
    logits = (3 * torch.randn(n, V, generator=g)).to(DEVICE, dtype)
    temperature = torch.tensor([0.0, 1.0, 0.6, 1.7] * (n // 4), device=DEVICE)
    u = torch.rand(n, generator=g).to(DEVICE)
    off = (torch.zeros(n, dtype=torch.long, device=DEVICE), torch.ones(n, device=DEVICE))
    tokens, logprobs = sample_untruncated(logits, temperature, *off, u)
    ref_tokens, ref_logprobs = sample(logits, temperature, *off, u)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=0, atol=1e-5)
    # Greedy ties go to the first index, across kernel blocks too, as torch.argmax.
    tied = torch.zeros(2, V, device=DEVICE, dtype=dtype)
    tied[:, [4500, 7, 4501]] = 1
    greedy, _ = sample_untruncated(tied, torch.zeros(2, device=DEVICE), *off[:1] * 2, u[:2])
    assert greedy.tolist() == [7, 7]
