"""Sparse mixture-of-experts MLP: a router, top-k routed SwiGLU experts, optional shared
experts, and routing replay.

Two routers, one per style of MoE (`ModelConfig.deepseek_moe`), with one interface: `scores`
(fp32 [N, E], what the weights are taken from), `choose` (the top-k ids) and `weigh` (the
weights at given ids).

- `SoftmaxRouter` (Qwen3-MoE): softmax over the router logits, top-k of those probabilities,
  optionally renormalized (`norm_topk_prob`). A Qwen2-style shared expert sits behind its own
  sigmoid gate (`shared_expert`, `shared_expert_gate`).
- `SigmoidRouter` (DeepSeek-V3, GLM-4.5): sigmoid scores from fp32 logits. Experts are *chosen*
  on the scores plus `e_score_correction_bias` (DeepSeek's auxiliary-loss-free balancing term),
  limited to the `topk_group` best of `n_group` expert groups, a group ranked by the sum of its
  two best biased scores; the *weights* are the unbiased scores at the chosen ids, optionally
  renormalized, times `routed_scaling_factor`. The bias is a parameter without gradient (it is
  loaded and synced like a weight, never trained; DeepSeek adjusts it outside backprop by
  expert load, which streamrl does not). `n_shared_experts` shared experts run as one ungated
  MLP (`shared_experts`).

Routing replay: the trainer must push gradients through the same experts the rollout engine
used, or the importance ratio compares two different networks. Given `forced_ids` (the ids the
engine recorded), the block routes each token to exactly those experts, but takes the gate
weights from its own router scores at those ids (normalized and scaled as in free routing).
The weights are then a differentiable function of the router, so the router still learns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrl.models.config import ModelConfig
from streamrl.models.grouped import grouped_swiglu
from streamrl.models.layers import MLP


class Experts(nn.Module):
    """All routed experts of one layer, stacked so one parameter holds every expert.

    `impl` picks how they run: "grouped" (default; `streamrl.models.grouped`: one launch per
    projection for all experts, no host synchronisation, CUDA-graph capturable) or "loop" (one
    GEMM per expert from Python with a host synchronisation per layer; the reference the
    grouped path is tested and benchmarked against). `backend` pins the grouped backend
    ("grouped_mm" or "padded"); None picks per device and dtype."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.impl = "grouped"
        self.backend: str | None = None
        E, H, Im = num_experts, hidden_size, intermediate_size
        self.gate_proj = nn.Parameter(torch.empty(E, Im, H))
        self.up_proj = nn.Parameter(torch.empty(E, Im, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, Im))
        for w in (self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(w, std=0.02)

    def projections(self) -> tuple[Tensor, Tensor, Tensor]:
        """(gate, up, down) as the forward uses them; quantized experts override it
        (streamrl/models/quant.py)."""
        return self.gate_proj, self.up_proj, self.down_proj

    def forward(self, x: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
        # x: [N, H]; ids: [N, k] long; weights: [N, k] -> [N, H]
        N, k = ids.shape
        if N == 0:
            return x.new_zeros(0, x.shape[-1])
        gate, up, down = self.projections()
        if self.impl == "grouped":
            y = grouped_swiglu(x, ids, gate, up, down, self.backend)  # [N*k, H], assignment order
            return (y.view(N, k, -1) * weights[..., None]).sum(dim=1)
        if self.impl != "loop":
            raise ValueError(f"unknown expert impl {self.impl!r}; expected 'grouped' or 'loop'")
        flat = ids.reshape(-1)  # [N*k], assignment a = token a // k, rank a % k
        # Stable sort groups assignments by expert in a fixed order: deterministic on any device.
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=gate.shape[0]).tolist()
        tokens = order // k
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            xs = x[tokens[start : start + n]]  # [n, H]
            h = F.silu(xs @ gate[e].T) * (xs @ up[e].T)  # [n, I]
            outs.append(h @ down[e].T)  # [n, H]
            start += n
        y_sorted = torch.cat(outs)  # [N*k, H] in expert order
        # Un-permute with a copy (each slot written once) instead of a scatter-add, so the
        # sum over k below has a fixed order and no atomics are needed on GPU.
        y = torch.empty_like(y_sorted).index_copy(0, order, y_sorted)
        return (y.view(N, k, -1) * weights[..., None]).sum(dim=1)


class SoftmaxRouter(nn.Linear):
    """Qwen's router: top-k of the softmax probabilities (`mlp.gate.weight`: [E, H])."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.hidden_size, config.num_experts, bias=False)
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob

    def scores(self, x: Tensor) -> Tensor:
        # x: [N, H] -> [N, E] fp32 probabilities
        return F.softmax(self(x), dim=-1, dtype=torch.float32)

    def choose(self, scores: Tensor) -> Tensor:
        # scores: [N, E] -> ids: [N, k] long, best first
        return torch.topk(scores, self.top_k, dim=-1).indices

    def weigh(self, scores: Tensor, ids: Tensor) -> Tensor:
        # scores: [N, E]; ids: [N, k] -> weights: [N, k] fp32
        weights = scores.gather(-1, ids)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights


class SigmoidRouter(nn.Module):
    """DeepSeek-V3 / GLM-4.5's router (module docstring). Parameter names are the checkpoints':
    `mlp.gate.weight` [E, H] and `mlp.gate.e_score_correction_bias` [E]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        E = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(E, config.hidden_size))
        nn.init.normal_(self.weight, std=0.02)
        # A parameter, not a buffer, so checkpoints, weight sync and digests carry it like any
        # weight; requires_grad=False keeps it out of the optimizer.
        self.e_score_correction_bias = nn.Parameter(torch.zeros(E), requires_grad=False)

    def scores(self, x: Tensor) -> Tensor:
        # x: [N, H] -> [N, E] fp32 sigmoid scores. Logits in fp32 as transformers computes them,
        # also under autocast (which would run the linear in bf16 and move near-tied choices).
        with torch.autocast(x.device.type, enabled=False):
            return torch.sigmoid(F.linear(x.float(), self.weight.float()))

    def choose(self, scores: Tensor) -> Tensor:
        # scores: [N, E] -> ids: [N, k] long, best (bias-corrected) first
        N, E = scores.shape
        biased = (scores + self.e_score_correction_bias.float()).detach()  # [N, E]
        grouped = biased.view(N, self.n_group, E // self.n_group)  # [N, G, E/G]
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [N, G]
        best_groups = group_scores.topk(self.topk_group, dim=-1).indices  # [N, topk_group]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
        biased = biased.masked_fill(~keep[:, :, None].expand_as(grouped).reshape(N, E),
                                    float("-inf"))
        return biased.topk(self.top_k, dim=-1).indices

    def weigh(self, scores: Tensor, ids: Tensor) -> Tensor:
        # scores: [N, E]; ids: [N, k] -> weights: [N, k] fp32
        weights = scores.gather(-1, ids)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor


class MoE(nn.Module):
    """Drop-in replacement for the dense MLP in MoE layers; also returns the routed ids."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.gate: SoftmaxRouter | SigmoidRouter = (
            SigmoidRouter(config) if config.deepseek_moe else SoftmaxRouter(config))
        self.experts = Experts(config.num_experts, H, config.moe_intermediate_size)
        self.shared_expert: MLP | None = None
        self.shared_expert_gate: nn.Linear | None = None
        if config.shared_expert_intermediate_size > 0:
            self.shared_expert = MLP(H, config.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(H, 1, bias=False)
        self.shared_experts: MLP | None = None  # DeepSeek/GLM: ungated, n_shared_experts wide
        if config.deepseek_moe and config.n_shared_experts > 0:
            self.shared_experts = MLP(H, config.n_shared_experts * config.moe_intermediate_size)

    def forward(
        self, x: Tensor, forced_ids: Tensor | None = None, forced_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Returns (output, routed expert ids). `forced_ids` replaces the router's choice, at
        every token or, with `forced_mask`, only where the mask is True (the router picks freely
        elsewhere, e.g. at prompt tokens whose routing was never recorded)."""
        # x: [B, T, H]; forced_ids: [B, T, k] int or None; forced_mask: [B, T] bool or None
        # -> out: [B, T, H], ids: [B, T, k] int32
        B, T, H = x.shape
        flat = x.reshape(B * T, H)
        scores = self.gate.scores(flat)  # [N, E] fp32
        if forced_ids is None:
            ids = self.gate.choose(scores)  # [N, k]
        else:
            ids = self._check_forced(forced_ids, B, T).reshape(B * T, self.top_k)
            if forced_mask is not None:
                ids = torch.where(forced_mask.reshape(B * T, 1), ids, self.gate.choose(scores))
            # A token's k experts are distinct, as top-k makes them (the padded grouped
            # backend sizes each expert's buffer for at most one row per token).
            if self.top_k > 1 and bool((ids.sort(-1).values.diff(dim=-1) == 0).any()):
                raise ValueError("forced routing repeats an expert within one token's top-k")
        weights = self.gate.weigh(scores, ids)  # [N, k] fp32
        out = self.experts(flat, ids, weights.to(x.dtype))
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(B, T, H), ids.view(B, T, self.top_k).to(torch.int32)

    def _check_forced(self, forced_ids: Tensor, B: int, T: int) -> Tensor:
        if forced_ids.shape != (B, T, self.top_k):
            raise ValueError(
                f"forced routing for this layer must have shape [{B}, {T}, {self.top_k}], "
                f"got {list(forced_ids.shape)}"
            )
        if forced_ids.is_floating_point():
            raise ValueError(f"forced routing ids must be integers, got {forced_ids.dtype}")
        ids = forced_ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_experts):
            raise ValueError(f"forced routing ids must lie in [0, {self.num_experts})")
        return ids


def set_expert_impl(model: nn.Module, impl: str, backend: str | None = None) -> int:
    """Run every MoE layer of `model` with `impl` ("grouped" or "loop") and, for "grouped",
    `backend` (None: per device). Returns how many layers were set."""
    if impl not in ("grouped", "loop"):
        raise ValueError(f"unknown expert impl {impl!r}; expected 'grouped' or 'loop'")
    layers = [m for m in model.modules() if isinstance(m, Experts)]
    for m in layers:
        m.impl, m.backend = impl, backend
    return len(layers)
