"""`MegatronConfig` (`[trainer.megatron]`): the megatron-core parallel layout of a trainer,
read by `streamrl plan` (streamrl/plan/) to size a placement. The data-parallel size is not set
here: it is what the trainer's GPUs leave after tensor x pipeline.

The megatron backend of this repository trains on one GPU so far, so `load_recipe` refuses a
run whose sizes are above 1 (docs/recipes.md); planning such a recipe works.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class MegatronConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    tensor_parallel: int = 1
    """Ranks each layer's attention and dense MLP are split over (with sequence parallel)."""
    pipeline_parallel: int = 1
    """Stages the decoder layers are split over, contiguously (1F1B schedule)."""
    expert_parallel: int = 1
    """Ranks each MoE layer's routed experts are split over (whole experts; must divide the
    expert count and tensor x data parallel)."""
    recompute: bool = False
    """Full recompute per layer: keep each layer's input only and rebuild its activations in
    backward."""
    grad_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the gradients megatron accumulates and reduces (its main grads)."""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel", "expert_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.megatron.{name} must be at least 1, "
                                 f"got {getattr(self, name)}")

    @property
    def is_single_gpu(self) -> bool:
        return self.tensor_parallel == self.pipeline_parallel == self.expert_parallel == 1
