"""Chunked per-token logprobs equal the naive full-logits computation, gradients included."""

from __future__ import annotations

import pytest
import torch

from streamrl.models import token_logprobs


def naive(hidden, weight, targets, temperature):
    logits = (hidden @ weight.T).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_match_full_logits(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 13, 32, generator=g, requires_grad=True)
    weight = torch.randn(500, 32, generator=g, requires_grad=True)
    targets = torch.randint(0, 500, (3, 13), generator=g)

    logp, entropy = token_logprobs(
        hidden, weight, targets, temperature=temperature, chunk_size=5, with_entropy=True
    )
    ref_logp, ref_entropy = naive(hidden, weight, targets, temperature)
    assert logp.shape == entropy.shape == (3, 13)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=0)

    grads = torch.autograd.grad((logp + 0.1 * entropy).sum(), (hidden, weight))
    ref_grads = torch.autograd.grad((ref_logp + 0.1 * ref_entropy).sum(), (hidden, weight))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_logprobs_without_grad_and_bad_arguments() -> None:
    hidden, weight = torch.randn(4, 8), torch.randn(20, 8)
    targets = torch.tensor([1, 2, 3, 4])
    logp, entropy = token_logprobs(hidden, weight, targets)
    assert entropy is None and (logp <= 0).all()
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, targets, temperature=0.0)
