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


def fused_token_logprobs(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 4096,
    compute_dtype: torch.dtype | None = None,
    compiled: bool = False,
) -> Tensor:
    """`token_logprobs` without entropy as one autograd Function, for GPU training.

    Same result as `token_logprobs(...)[0]`, but the graph keeps only the inputs and one fp32
    log-normalizer per token: backward recomputes each chunk's logits, turns them into
    d(logp)/d(logits) = g * (onehot - softmax) / temperature in one pass, and feeds the two
    matmuls, so at most one [chunk, vocab] logits tensor (in `compute_dtype`) and its gradient
    are alive at a time. The fp32 math over the vocabulary reads the low-precision logits once;
    with `compiled=True` it runs as torch.compile'd kernels (one reduction forward, one pass
    backward) instead of several eager ones. `compute_dtype` (default: the autocast dtype when
    autocast is on, else hidden's) is what the matmuls run in; the weight gradient is summed over
    chunks in fp32 and returned in the weight's own dtype (the fp32 master weights).
    """
    # hidden: [..., H]; lm_head_weight: [V, H]; targets: [...] -> logprobs [...] fp32
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if compute_dtype is None:
        device_type = hidden.device.type
        compute_dtype = (torch.get_autocast_dtype(device_type)
                         if torch.is_autocast_enabled(device_type) else hidden.dtype)
    shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    kernels = _compiled_kernels() if compiled else (_lse_target, _grad_logits)
    logp = _FusedLogprobs.apply(h, lm_head_weight, targets.reshape(-1).long(),
                                1.0 / temperature, chunk_size, compute_dtype, kernels)
    return logp.view(shape)


def _lse_target(logits: Tensor, t: Tensor, inv_temp: float) -> tuple[Tensor, Tensor]:
    # logits: [n, V] any dtype; t: [n] -> logsumexp, target logit: [n] fp32
    x = logits.float() * inv_temp
    return torch.logsumexp(x, dim=-1), x.gather(-1, t[:, None]).squeeze(-1)


def _grad_logits(logits: Tensor, t: Tensor, lse: Tensor, g: Tensor, inv_temp: float) -> Tensor:
    # d(g * logp[t]) / d(logits) = g * (onehot(t) - softmax) * inv_temp, in logits' dtype
    x = logits.float() * inv_temp
    p = torch.exp(x - lse[:, None])
    cols = torch.arange(logits.shape[-1], device=logits.device)
    onehot = (cols[None, :] == t[:, None]).float()
    return (g[:, None] * (onehot - p) * inv_temp).to(logits.dtype)


_COMPILED: tuple | None = None


def _compiled_kernels() -> tuple:
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = (torch.compile(_lse_target, dynamic=False),
                     torch.compile(_grad_logits, dynamic=False))
    return _COMPILED


class _FusedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, t: Tensor, inv_temp: float, chunk: int,
                dtype: torch.dtype, kernels: tuple) -> Tensor:
        # h: [N, H]; w: [V, H]; t: [N] -> logp [N] fp32
        lse_fn = kernels[0]
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), w.to(dtype)
            logp = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            lse = torch.empty_like(logp)
            for s in range(0, h.shape[0], chunk):
                z, tgt = lse_fn(hc[s : s + chunk] @ wc.T, t[s : s + chunk], inv_temp)
                lse[s : s + chunk] = z
                logp[s : s + chunk] = tgt - z
        ctx.save_for_backward(hc, wc, t, lse)
        ctx.inv_temp, ctx.chunk, ctx.kernels = inv_temp, chunk, kernels
        ctx.h_dtype, ctx.w_dtype = h.dtype, w.dtype
        return logp

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        hc, wc, t, lse = ctx.saved_tensors
        grad_fn = ctx.kernels[1]
        g = g.float().contiguous()
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh = torch.empty_like(hc) if need_h else None
        dw = torch.zeros(wc.shape, dtype=torch.float32, device=wc.device) if need_w else None
        with torch.autocast(hc.device.type, enabled=False):
            for s in range(0, hc.shape[0], ctx.chunk):
                hs = hc[s : s + ctx.chunk]
                dz = grad_fn(hs @ wc.T, t[s : s + ctx.chunk], lse[s : s + ctx.chunk],
                             g[s : s + ctx.chunk], ctx.inv_temp)  # [n, V]
                if dh is not None:
                    dh[s : s + ctx.chunk] = dz @ wc
                if dw is not None:
                    dw += (dz.T @ hs).float()
        return (None if dh is None else dh.to(ctx.h_dtype),
                None if dw is None else dw.to(ctx.w_dtype), None, None, None, None, None)
