"""What one training step holds in memory, bounded and checked before the first step.

    micro_batches(batch, rows, compute)   a minibatch's rows cut into micro-batches: by rows
                                          (`micro_batch_rows`) or by a budget of tokens
                                          (`micro_batch_tokens`, each trimmed to its longest row)
    check_memory(config, checkpoint)      the peak of the worst step the recipe allows, from the
                                          planner's arithmetic (streamrl/plan/learner.py,
                                          `check_peak`), against the device's memory: a
                                          `TrainerMemoryError` naming the numbers and the fix

The trainer process calls `check_memory` before it builds the learner (`__main__.py`), so a
recipe whose longest rows cannot fit fails at start, never with an out-of-memory error in the
middle of a run. The limit is `[trainer.compute] memory_limit`: "auto" is 90% of the GPU's free
memory (`torch.cuda.mem_get_info`, so a colocated engine's share is already gone) and no check
on CPU; a size is checked by `load_recipe` too, before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from streamrl.consumers.trainer.batch import TrainBatch
from streamrl.plan.learner import TrainerMemoryError, check_peak
from streamrl.recipe.config import RunConfig
from streamrl.recipe.trainer import ComputeConfig

__all__ = ["TrainerMemoryError", "check_memory", "device_limit", "micro_batches"]

MicroBatch = tuple[slice, slice]
"""(rows, columns) of a `TrainBatch`'s [B, S] tensors."""


def micro_batches(batch: TrainBatch, rows: slice, compute: ComputeConfig, *,
                  multiple: int = 1) -> list[MicroBatch]:
    """`rows` of `batch` cut into micro-batches, in order.

    `micro_batch_rows`: at most that many rows each, every column. `micro_batch_tokens`:
    consecutive rows while (rows) x (the longest row's tokens, rounded up to `multiple`) stays
    within the budget; a row longer than the budget is a micro-batch alone. Columns past a
    micro-batch's longest row hold only padding and are cut off, so a micro-batch of short rows
    costs no compute for the long rows' width. Neither set: the whole minibatch, one micro-batch.
    """
    every = slice(None)
    if compute.micro_batch_tokens is None:
        size = compute.micro_batch_rows or (rows.stop - rows.start)
        return [(slice(s, min(s + size, rows.stop)), every)
                for s in range(rows.start, rows.stop, size)]
    budget = compute.micro_batch_tokens
    fill = (batch.segments[rows] >= 0).sum(dim=1).tolist()  # rows are right-padded

    def width(n: int) -> int:
        return -(-n // multiple) * multiple

    out: list[MicroBatch] = []
    start, longest = rows.start, 0
    for i, n in enumerate(fill):
        row = rows.start + i
        widest = max(longest, n)
        if row > start and (row - start + 1) * width(widest) > budget:
            out.append((slice(start, row), slice(0, width(longest))))
            start, widest = row, n
        longest = widest
    out.append((slice(start, rows.stop), slice(0, width(longest))))
    return out


def device_limit(compute: ComputeConfig) -> int | None:
    """Bytes the learner may use: `memory_limit` when it is a size; under "auto" 90% of the
    GPU's free memory plus what this process's allocator already holds (the rest: allocator
    fragmentation, kernels' workspaces), None on CPU; None under "off"."""
    if compute.memory_limit == "off":
        return None
    if compute.memory_limit != "auto":
        return compute.memory_limit_bytes
    if not compute.on_gpu:
        return None
    device = compute.torch_device
    free, _ = torch.cuda.mem_get_info(device)
    return int(0.9 * (free + torch.cuda.memory_reserved(device)))


def check_memory(config: RunConfig, model: dict[str, Any] | Path, *,
                 limit: int | None = None) -> None:
    """Raise `TrainerMemoryError` when the predicted peak of the worst step exceeds `limit`
    (default: `device_limit`), naming the terms and what to change. `model`: the HF config
    dict, or a checkpoint directory holding its config.json. The megatron backend plans its
    own layout (`streamrl plan`) and is not checked here."""
    if config.trainer.backend != "torch":
        return
    limit = device_limit(config.trainer.compute) if limit is None else limit
    if limit is None:
        return
    hf_config = (json.loads((model / "config.json").read_text()) if isinstance(model, Path)
                 else model)
    where = ("memory_limit" if config.trainer.compute.memory_limit != "auto"
             else f"free on {config.trainer.compute.device}")
    check_peak(config, hf_config, limit=limit, where=where)
