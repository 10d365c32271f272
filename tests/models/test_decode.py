"""Incremental decode with the KV cache, and packed batches, agree with plain full forwards."""

from __future__ import annotations

import pytest
import torch

from streamrl.models import KVCache, load_checkpoint
from tests.models.tiny import ATOL, Tiny

PAD = 0


def sequences(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 300, (n,), generator=g) for n in lengths]


def alone(model, seq: torch.Tensor):
    """Reference: one sequence, no cache, no padding."""
    with torch.no_grad():
        out = model(seq[None], torch.arange(len(seq))[None])
    return out.logits[0], (None if out.routed_experts is None else out.routed_experts[0])


def test_batched_decode_matches_full_forward(tiny: Tiny) -> None:
    """Right-padded prefill of prompts of different lengths, then one token per step per row;
    every real token's logits (and routed experts) equal those of the sequence run alone."""
    model = load_checkpoint(tiny.path)
    seqs = sequences([12, 17, 6])
    prompt_lens = [5, 9, 2]
    refs = [alone(model, s) for s in seqs]
    cache = KVCache.for_model(model.config, num_slots=3, max_seq_len=32)

    P = max(prompt_lens)
    tokens = torch.full((3, P), PAD)
    for b, (s, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        tokens[b, :p] = s[:p]
    with torch.no_grad():
        out = model(tokens, torch.arange(P).expand(3, P), kv_cache=cache)
    for b, p in enumerate(prompt_lens):
        assert (out.logits[b, :p] - refs[b][0][:p]).abs().max() <= ATOL
        if out.routed_experts is not None:
            assert torch.equal(out.routed_experts[b, :p], refs[b][1][:p])

    # Decode: row b feeds token at position prompt_len_b + step; finished rows feed padding.
    for step in range(max(len(s) - p for s, p in zip(seqs, prompt_lens, strict=True))):
        pos = torch.tensor([[p + step] for p in prompt_lens])  # [3, 1]
        idx = pos[:, 0].tolist()
        tok = torch.tensor([[s[i] if i < len(s) else PAD] for s, i in zip(seqs, idx, strict=True)])
        with torch.no_grad():
            out = model(tok, pos, kv_cache=cache)
        for b, i in enumerate(idx):
            if i < len(seqs[b]):
                assert (out.logits[b, 0] - refs[b][0][i]).abs().max() <= ATOL
                if out.routed_experts is not None:
                    assert torch.equal(out.routed_experts[b, 0], refs[b][1][i])


def test_slots_are_reusable_and_addressable(dense: Tiny) -> None:
    """A slot that held a longer sequence serves a new one with no clearing, and rows may map
    to any slots: the logits are exactly those of the sequences alone."""
    model = load_checkpoint(dense.path)
    old, new_a, new_b = sequences([20, 7, 4], seed=1)
    cache = KVCache.for_model(model.config, num_slots=4, max_seq_len=24)
    with torch.no_grad():
        model(old[None], torch.arange(20)[None], kv_cache=cache, slots=torch.tensor([3]))
        # new_a reuses slot 3 (stale k/v at 7..19); new_b goes to slot 1.
        model(new_a[None, :6], torch.arange(6)[None], kv_cache=cache, slots=torch.tensor([3]))
        model(new_b[None, :3], torch.arange(3)[None], kv_cache=cache, slots=torch.tensor([1]))
        out = model(
            torch.tensor([[new_a[6]], [new_b[3]]]),
            torch.tensor([[6], [3]]),
            kv_cache=cache,
            slots=torch.tensor([3, 1]),
        )
    assert (out.logits[0, 0] - alone(model, new_a)[0][6]).abs().max() <= ATOL
    assert (out.logits[1, 0] - alone(model, new_b)[0][3]).abs().max() <= ATOL


def test_packed_rows_keep_sequences_apart(tiny: Tiny) -> None:
    """Two sequences packed in one row (positions restart at 0), right-padded next to a row
    holding a third: every sequence gets the logits it gets alone."""
    model = load_checkpoint(tiny.path)
    a, b, c = sequences([7, 9, 11], seed=2)
    tokens = torch.stack([torch.cat([a, b]), torch.cat([c, torch.full((5,), PAD)])])
    positions = torch.stack([torch.cat([torch.arange(7), torch.arange(9)]), torch.arange(16)])
    with torch.no_grad():
        out = model(tokens, positions)
    assert (out.logits[0, :7] - alone(model, a)[0]).abs().max() <= ATOL
    assert (out.logits[0, 7:] - alone(model, b)[0]).abs().max() <= ATOL
    assert (out.logits[1, :11] - alone(model, c)[0]).abs().max() <= ATOL


def test_cache_rejects_positions_it_cannot_hold(dense: Tiny) -> None:
    model = load_checkpoint(dense.path)
    cache = KVCache.for_model(model.config, num_slots=1, max_seq_len=8)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 8\)"):
        model(torch.tensor([[1]]), torch.tensor([[8]]), kv_cache=cache)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        KVCache.for_model(model.config, num_slots=1, max_seq_len=10_000)
