"""Batch assembly: every per-response-token value lands on the position that predicts it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrl.consumers.trainer import BatchConfig, build_batch
from streamrl.models import KVCache, token_logprobs
from streamrl.schemas import samples_to_batch
from streamrl.schemas.testing import MoeShape, make_group
from tests.trainer.helpers import sample, tiny_model

F, T = False, True


def two_samples():
    routed = np.array([[[1, 2]], [[3, 0]]], np.uint8)  # [2 tokens, 1 layer, top_k 2]
    a = sample([5, 6, 7], [8, 9], logprobs=[-0.1, -0.2], mask=[T, F], versions=[3, 4],
               reward=1.0, group_id="ga", routed=routed)
    b = sample([1], [2, 3, 4], logprobs=[-0.3, -0.4, -0.5], versions=[2, 2, 2], reward=0.5,
               group_id="gb")
    return a, b


def test_hand_checked_alignment_of_two_rows() -> None:
    a, b = two_samples()
    batch = build_batch([a, b])
    assert batch.tokens.tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 0]]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert batch.targets.tolist() == [[6, 7, 8, 9, 0], [2, 3, 4, 0, 0]]
    assert batch.loss_mask.tolist() == [[F, F, T, F, F], [T, T, T, F, F]]
    assert torch.allclose(batch.old_logprobs, torch.tensor(
        [[0, 0, -0.1, -0.2, 0], [-0.3, -0.4, -0.5, 0, 0]]))
    assert batch.versions.tolist() == [[-1, -1, 3, 4, -1], [2, 2, 2, -1, -1]]
    assert batch.segments.tolist() == [[0, 0, 0, 0, 0], [1, 1, 1, 1, -1]]
    assert batch.rewards.tolist() == [1.0, 0.5]
    assert batch.group_ids == ["ga", "gb"]
    assert batch.sample_ids == [a.sample_id, b.sample_id]
    # Routing recorded for response token i sits where that token is predicted (P - 1 + i).
    assert batch.routing_mask is not None and batch.forced_routing is not None
    assert batch.routing_mask.tolist() == [[F, F, T, T, F], [F, F, F, F, F]]
    assert batch.forced_routing[0, 2:4, 0].tolist() == [[1, 2], [3, 0]]
    assert batch.forced_routing[1, :, 0].tolist() == [[0, 1]] * 5  # placeholder: valid ids


def test_arrow_input_gives_the_same_batch_as_samples() -> None:
    rng = np.random.default_rng(0)
    samples = make_group(rng, group_size=3, num_prompt_tokens=5, num_response_tokens=7,
                         vocab_size=32, moe=MoeShape(2, 2, 4))
    from_arrow = build_batch([samples_to_batch(samples[:2]), samples_to_batch(samples[2:])])
    from_samples = build_batch(samples)
    for name in ("tokens", "targets", "loss_mask", "old_logprobs", "versions", "forced_routing"):
        assert torch.equal(getattr(from_arrow, name), getattr(from_samples, name)), name
    assert from_arrow.sample_ids == [s.sample_id for s in samples]


def test_packing_keeps_sequences_apart_and_logprobs_unchanged() -> None:
    a, b = two_samples()
    c = sample([3, 3], [1, 1, 1], group_id="gc")
    packed = build_batch([a, b, c], BatchConfig(pack_row_tokens=9))
    # First fit in input order: a(5) + b(4) fill row 0, c(5) opens row 1.
    assert packed.tokens.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4], [3, 3, 1, 1, 1, 0, 0, 0, 0]]
    assert packed.positions[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    # The last token of a predicts nothing: never b's first token.
    assert packed.targets[0].tolist() == [6, 7, 8, 9, 0, 2, 3, 4, 0]
    assert packed.loss_mask[0].tolist() == [F, F, T, F, F, T, T, T, F]
    assert packed.segments.tolist() == [[0] * 5 + [1] * 4, [2] * 5 + [-1] * 4]

    model = tiny_model()
    plain = build_batch([a, b, c])
    with torch.no_grad():
        lp = {}
        for name, batch in (("packed", packed), ("plain", plain)):
            hidden = model(batch.tokens, batch.positions, return_hidden=True).hidden
            logp, _ = token_logprobs(hidden, model.lm_head.weight, batch.targets)
            lp[name] = logp[batch.loss_mask]
    assert torch.allclose(lp["packed"], lp["plain"], atol=1e-5)


def test_recorded_routing_and_logprobs_match_an_engine_loop() -> None:
    """Sample with a KV cache as the engine does, recording per token the routing of the pass
    whose logits sampled it; the trainer's replay must reproduce the sampling logprobs."""
    model, temperature, P, R = tiny_model(moe=True), 0.7, 4, 6
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 32, (1, P), generator=g)
    cache = KVCache.for_model(model.config, num_slots=1, max_seq_len=16)
    tokens, logprobs, routed = [], [], []
    with torch.no_grad():
        out = model(prompt, torch.arange(P)[None], kv_cache=cache)
        for i in range(R):
            logp = torch.log_softmax(out.logits[0, -1] / temperature, -1)
            token = int(torch.multinomial(logp.exp(), 1, generator=g))
            tokens.append(token)
            logprobs.append(float(logp[token]))
            routed.append(out.routed_experts[0, -1].numpy())
            out = model(torch.tensor([[token]]), torch.tensor([[P + i]]), kv_cache=cache)
    s = sample(prompt[0].tolist(), tokens, logprobs=logprobs,
               routed=np.stack(routed).astype(np.uint8))
    # A second, shorter sample without routing: padding and unrecorded rows in the same batch.
    batch = build_batch([s, sample([1, 2], [3], sample_id="short")])

    with torch.no_grad():  # the learner's path: recorded routing forced under its mask
        free = model(batch.tokens, batch.positions).routed_experts
        out = model(batch.tokens, batch.positions, forced_routing=batch.forced_routing,
                    routing_mask=batch.routing_mask, return_hidden=True)
        forced, hidden = out.routed_experts, out.hidden
    logp, _ = token_logprobs(hidden, model.lm_head.weight, batch.targets, temperature=temperature)
    assert batch.routing_mask is not None
    # Same weights, so the model's own routing at the aligned positions is what was recorded.
    recorded = batch.routing_mask
    assert torch.equal(free[recorded], forced[recorded])
    assert torch.equal(forced[~recorded], free[~recorded].int())
    trained = batch.loss_mask[0]
    assert int(trained.sum()) == R
    assert torch.allclose(logp[0, trained], batch.old_logprobs[0, trained], atol=1e-5)


@pytest.mark.parametrize(("make_rows", "config", "message"), [
    (lambda: [], None, "zero samples"),
    (lambda: [sample([], [1, 2])], None, "no prompt tokens"),
    (lambda: [sample([1], [2], sample_id="x"), sample([3], [4], sample_id="x")], None, "twice"),
    (lambda: [sample([1, 2, 3], [4, 5])], BatchConfig(pack_row_tokens=4), "pack_row_tokens=4"),
    (lambda: [sample([1], [2], routed=np.zeros((1, 2, 2), np.uint8), sample_id="a"),
              sample([1], [2], routed=np.zeros((1, 3, 2), np.uint8), sample_id="b")],
     None, "routing shape"),
])
def test_bad_input_is_refused_with_a_reason(make_rows, config, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_batch(make_rows(), config)


def test_padding_to_a_multiple_and_config_validation() -> None:
    batch = build_batch([sample([1, 2], [3])], BatchConfig(pad_to_multiple_of=8))
    assert batch.tokens.shape == (1, 8)
    assert batch.positions[0].tolist() == list(range(8))
    with pytest.raises(ValueError, match="pack_row_tokens"):
        BatchConfig(pack_row_tokens=0)
