"""Per-token log-probabilities from hidden states without a full [tokens, vocab] logits tensor.

RL losses need log p(target) (and often the entropy) at every response token. Materializing
[B, T, vocab] logits for a 150k vocabulary costs more memory than the rest of the model's
activations, so logits are formed `chunk_size` tokens at a time; under autograd each chunk is
recomputed in backward (activation checkpointing) instead of kept alive.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def token_logprobs(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """log softmax(hidden @ W^T / temperature)[target] per token, and optionally the entropy.

    Pass the temperature the sampler used, so the logprobs are those of the distribution the
    tokens were actually drawn from. Results are computed in fp32 whatever the model dtype.
    """
    # hidden: [..., H]; lm_head_weight: [V, H]; targets: [...] -> logprobs, entropy: [...] fp32
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    t = targets.reshape(-1).long()  # [N]
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    logps, ents = [], []
    for start in range(0, h.shape[0], chunk_size):
        args = (h[start : start + chunk_size], lm_head_weight, t[start : start + chunk_size])
        if needs_grad:
            lp, ent = checkpoint(_chunk, *args, temperature, with_entropy, use_reentrant=False)
        else:
            lp, ent = _chunk(*args, temperature, with_entropy)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps).view(shape) if logps else h.new_zeros(shape, dtype=torch.float32)
    if not with_entropy:
        return logp, None
    entropy = torch.cat(ents).view(shape) if ents else torch.zeros_like(logp)
    return logp, entropy


def _chunk(
    h: Tensor, w: Tensor, t: Tensor, temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    # h: [n, H]; w: [V, H]; t: [n] -> logp, entropy: [n]
    logits = (h @ w.T).float()
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)  # [n]
    logp = logits.gather(-1, t[:, None]).squeeze(-1) - logz
    if not with_entropy:
        return logp, logp.new_zeros(0)
    probs = torch.softmax(logits, dim=-1)
    entropy = logz - (probs * logits).sum(-1)
    return logp, entropy
