"""Sampling: greedy and its equivalents, the sampler's distribution, and stopping rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrl.hooks.generation import SamplingParams
from streamrl.producers.engine import sample
from tests.engine.engine_util import engine, request, teacher_forced
from tests.models.tiny import Tiny


def test_greedy_is_argmax_and_top_k_1_and_tiny_top_p_are_greedy(tiny: Tiny) -> None:
    eng = engine(tiny.path)
    greedy, top_k, top_p = eng.generate(
        [
            request("greedy", length=5, prompt_seed=1, temperature=0.0, max_new_tokens=16),
            request("top_k", length=5, prompt_seed=1, temperature=1.0, top_k=1, max_new_tokens=16),
            request(
                "top_p", length=5, prompt_seed=1, temperature=1.5, top_p=1e-6, max_new_tokens=16
            ),
        ]
    )
    _, _, logits = teacher_forced(eng.model, greedy, 1.0)  # [R, V] at the scoring positions
    np.testing.assert_array_equal(greedy.response_tokens, logits.argmax(-1).numpy())
    # Different request ids mean different seeds: the uniforms must not matter here.
    for other in (top_k, top_p):
        np.testing.assert_array_equal(other.response_tokens, greedy.response_tokens)


def test_sampler_draws_from_the_truncated_tempered_distribution() -> None:
    """20k rows of the same 6-token logits, one uniform each: frequencies follow the softmax
    at the row's temperature, restricted to the top-k / top-p prefix and renormalized; the
    returned logprob is the untruncated log_softmax(logits / T) of the drawn token."""
    base = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 20_000
    g = torch.Generator().manual_seed(0)
    u = torch.rand(n, generator=g)

    def draw(temperature: float, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
        logits = base.expand(n, 6)
        tokens, logp = sample(
            logits,
            torch.full((n,), temperature),
            torch.full((n,), top_k),
            torch.full((n,), top_p),
            u,
        )
        expected = torch.log_softmax(base / temperature, -1)[tokens]
        torch.testing.assert_close(logp, expected, atol=1e-6, rtol=0)
        return np.bincount(tokens.numpy(), minlength=6) / n, torch.softmax(
            base / temperature, -1
        ).numpy()

    freq, p = draw(0.8, 0, 1.0)
    np.testing.assert_allclose(freq, p, atol=0.01)
    freq, p = draw(1.0, 3, 1.0)
    assert freq[3:].sum() == 0
    np.testing.assert_allclose(freq[:3], p[:3] / p[:3].sum(), atol=0.01)
    freq, p = draw(1.0, 0, 0.7)  # p = [.57, .21, .13, ...]: mass before rank 2 is .78 >= .7
    assert freq[2:].sum() == 0
    np.testing.assert_allclose(freq[:2], p[:2] / p[:2].sum(), atol=0.01)


def test_sampler_rows_are_independent_and_greedy_ties_take_the_first_index() -> None:
    logits = torch.tensor([[0.0, 5.0, 5.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    tokens, _ = sample(
        logits,
        torch.tensor([0.0, 1.0]),
        torch.tensor([0, 1]),
        torch.tensor([1.0, 1.0]),
        torch.tensor([0.99, 0.99]),
    )
    assert tokens.tolist() == [1, 0]


def test_stop_token_ends_with_stop_and_is_kept(dense: Tiny) -> None:
    eng = engine(dense.path)
    (free,) = eng.generate([request("s", length=5, temperature=0.0, max_new_tokens=16)])
    stop = int(free.response_tokens[3])
    first = int(np.flatnonzero(free.response_tokens == stop)[0])
    (stopped,) = eng.generate(
        [request("s", length=5, temperature=0.0, max_new_tokens=16, stop_token_ids=(stop,))]
    )
    assert stopped.finish_reason == "stop"
    np.testing.assert_array_equal(stopped.response_tokens, free.response_tokens[: first + 1])


def test_length_limits(dense: Tiny) -> None:
    """max_new_tokens and max_seq_len both end a request with "length"; one token works too."""
    eng = engine(dense.path, max_seq_len=16)
    by_new, by_seq, one = eng.generate(
        [
            request("new", length=5, max_new_tokens=7),
            request("seq", length=10, max_new_tokens=100),
            request("one", length=15, max_new_tokens=100),
        ]
    )
    assert (by_new.finish_reason, by_new.num_response_tokens) == ("length", 7)
    assert (by_seq.finish_reason, by_seq.num_response_tokens) == ("length", 6)
    assert (one.finish_reason, one.num_response_tokens) == ("length", 1)
    t = by_new.timing
    assert t.queued_at <= t.started_at <= t.first_token_at <= t.finished_at


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1.0),
        dict(top_p=0.0),
        dict(top_k=-1),
        dict(max_new_tokens=0),
        dict(seed=-1),
        dict(seed=1 << 64),
        dict(stop_token_ids=(-2,)),
    ],
)
def test_bad_sampling_params_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_top_p_1_keeps_even_the_least_likely_token() -> None:
    """top_p = 1 means off, though the fp32 cumulative mass may pass 1 before the last token."""
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(1, 5000, generator=g)  # the fp32 cumsum ends ~4e-7 above 1
    logits[0, 0] = -60.0  # ranks last, probability ~1e-30
    tokens, _ = sample(
        logits, torch.ones(1), torch.zeros(1, dtype=torch.long), torch.ones(1), torch.tensor([0.0])
    )
    assert tokens.tolist() == [0]
