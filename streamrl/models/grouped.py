"""Grouped expert compute: every routed expert of a layer in one launch per projection, with no
host synchronisation, so the same code runs eagerly, under autograd and inside a CUDA graph.

Dispatch: the N*k (token, expert) assignments are sorted by expert id with a stable sort, so
assignments of one expert are contiguous and, within an expert, in token order. The group ends
come from `searchsorted` on the sorted ids (not `bincount`, whose CUDA kernel reads the maximum
back to the host to size its output). Every shape depends only on N, k and the number of
experts, never on how the router split the tokens: that is what makes the layer capturable.

Backends (`expert_backend`):
- "grouped_mm": `torch._grouped_mm(x_sorted, w.transpose(1, 2), offs=ends)`, one kernel per
  projection over all groups. On CUDA it is used for bf16 on sm90+ (Hopper, Blackwell) with
  every dim a multiple of 8 (16-byte aligned rows, which the CUTLASS kernel requires); on CPU
  it runs for any float dtype (a loop inside ATen, no Python loop).
- "padded": each expert's rows scattered into an [E, capacity, H] buffer (capacity N: top-k
  ids of a token are distinct, so an expert receives at most N rows), three batched GEMMs,
  then gathered back. Host-sync free and capturable on any CUDA GPU; it does E/k times the
  useful FLOPs and reads every expert, which is right for decode (memory bound, most experts
  touched) and wasteful for long prefill or training on pre-Hopper GPUs.

Exactness: on CPU in fp32 both backends equal the per-expert Python loop within rounding
(tests/models/test_moe_grouped.py). On GPU the grouped kernels sum in a different order than
cuBLAS does for the loop, so grouped and loop differ by bf16 rounding. Each backend is
deterministic run to run, forward and backward, as far as its GEMMs are: every gather and
scatter moves rows one to one (no two writes to a row, so no atomics race), and the k outputs of
a token, like the k gradients of its input, are summed in a fixed order. Routing is chosen
before the experts run, so it never depends on the backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("grouped_mm", "padded")


def expert_backend(x: Tensor, *weights: Tensor) -> str:
    """The fastest host-sync-free backend for activations `x` and expert weights [E, out, in]."""
    if x.device.type == "cpu":  # ATen's CPU grouped_mm takes fp32/bf16/fp16, not float64
        return "grouped_mm" if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else (
            "padded")
    if (x.device.type == "cuda" and hasattr(torch, "_grouped_mm") and x.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device)[0] >= 9
            and all(d % 8 == 0 for w in weights for d in w.shape[1:])):
        return "grouped_mm"
    return "padded"


def sort_by_expert(ids: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stable sort of the flattened assignments by expert id.
    Returns (order, sorted_ids, ends): sorted position -> assignment (token a // k, rank a % k),
    the expert of each sorted position, and each expert's cumulative end, int32."""
    # ids: [N, k] -> order: [N*k] long, sorted_ids: [N*k] long, ends: [E] int32
    flat = ids.reshape(-1)
    sorted_ids, order = torch.sort(flat, stable=True)
    bounds = torch.arange(num_experts, device=ids.device, dtype=sorted_ids.dtype)
    ends = torch.searchsorted(sorted_ids, bounds, right=True).to(torch.int32)
    return order, sorted_ids, ends


def grouped_swiglu(x: Tensor, ids: Tensor, gate: Tensor, up: Tensor, down: Tensor,
                   backend: str | None = None) -> Tensor:
    """Each assignment's expert output, in assignment order: row a is expert ids[a // k, a % k]
    applied to token a // k. Caller weights and sums over k."""
    # x: [N, H]; ids: [N, k] long; gate, up: [E, I, H]; down: [E, H, I] -> [N*k, H]
    N, k = ids.shape
    E = gate.shape[0]
    backend = backend or expert_backend(x, gate, up, down)
    if backend not in BACKENDS:
        raise ValueError(f"unknown expert backend {backend!r}; expected one of {BACKENDS}")
    order, sorted_ids, ends = sort_by_expert(ids, E)
    # Gather from the k-fold copy, not `x.index_select(0, order // k)`: every source row is then
    # read once, so the backward's index_add has no colliding rows (deterministic despite
    # atomics) and the k gradients of a token meet in a fixed-order sum over the expand.
    xs = x.unsqueeze(1).expand(N, k, x.shape[-1]).reshape(N * k, -1).index_select(0, order)
    if backend == "grouped_mm":
        h = (F.silu(torch._grouped_mm(xs, gate.transpose(1, 2), offs=ends))
             * torch._grouped_mm(xs, up.transpose(1, 2), offs=ends))  # [N*k, I]
        ys = torch._grouped_mm(h, down.transpose(1, 2), offs=ends)  # [N*k, H]
    else:
        starts = F.pad(ends[:-1], (1, 0)).long()  # [E] first sorted position of each expert
        slot = torch.arange(N * k, device=x.device) - starts[sorted_ids]  # [N*k] row in group
        buf = x.new_zeros(E, N, x.shape[-1]).index_put((sorted_ids, slot), xs)  # [E, N, H]
        h = F.silu(torch.bmm(buf, gate.transpose(1, 2))) * torch.bmm(buf, up.transpose(1, 2))
        ys = torch.bmm(h, down.transpose(1, 2))[sorted_ids, slot]  # [N*k, H]
    # Un-permute with a copy (each slot written once), no scatter-add: fixed order, no atomics.
    return torch.empty_like(ys).index_copy(0, order, ys)
