"""`segment_causal_mask` compiles as one graph (a whole-model torch.compile must not break at
the packed-rows check) and, compiled, attends exactly as the eager path does."""

from __future__ import annotations

import torch

from streamrl.models.attention import segment_causal_mask


def _eager_mask(positions: torch.Tensor) -> torch.Tensor:
    mask = segment_causal_mask(positions)
    T = positions.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return causal.expand(positions.shape[0], 1, T, T) if mask is None else mask


def test_the_mask_compiles_without_a_graph_break_and_matches_eager() -> None:
    packed = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5]])
    plain = torch.arange(6).repeat(2, 1)
    # fullgraph=True raises on any graph break (the old `.any()` branch: "Could not guard on
    # data-dependent expression"); torch._dynamo.explain did not count that one as a break.
    compiled = torch.compile(segment_causal_mask, fullgraph=True, backend="eager")
    for positions in (packed, plain):
        assert torch.equal(compiled(positions), _eager_mask(positions))
    assert segment_causal_mask(plain) is None  # eager keeps SDPA's mask-free causal path
    assert not compiled(packed)[0, 0, 3, 2]  # packed sequences stay apart when compiled
