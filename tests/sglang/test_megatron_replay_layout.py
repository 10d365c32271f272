"""The recorded routing laid out for megatron-core's RouterReplay (consumers/trainer/megatron/
replay.py): megatron routes `[S, B]` tokens flattened sequence-major and has no mask, so
unrecorded positions take the router's own ids. Pure tensor code: runs without megatron."""

from __future__ import annotations

import pytest
import torch

from streamrl.consumers.trainer.megatron.replay import replay_indices


def test_recorded_ids_land_on_megatron_token_order_and_the_rest_stay_own() -> None:
    B, S, L, k = 2, 3, 2, 2
    forced = torch.arange(B * S * L * k).reshape(B, S, L, k).int()
    mask = torch.tensor([[False, True, True], [True, False, False]])
    own = [torch.full((S * B, k), -1 - layer, dtype=torch.long) for layer in range(L)]
    out = replay_indices(forced, mask, own)
    for layer in range(L):
        for s in range(S):
            for b in range(B):
                row = out[layer][s * B + b]  # megatron's token s * B + b
                expected = forced[b, s, layer].long() if mask[b, s] else own[layer][0]
                assert torch.equal(row, expected)
        assert out[layer].dtype == torch.long


@pytest.mark.parametrize(("own", "message"), [
    ([torch.zeros(6, 2, dtype=torch.long)], "1 RouterReplay instances"),
    ([torch.zeros(5, 2, dtype=torch.long)] * 2, r"expected \[6, 2\]"),
])
def test_mismatched_records_are_refused(own, message: str) -> None:
    forced = torch.zeros(2, 3, 2, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match=message):
        replay_indices(forced, torch.ones(2, 3, dtype=torch.bool), own)
