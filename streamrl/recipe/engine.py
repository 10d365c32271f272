"""`EngineConfig`: the shape of the embedded torch engine's static state (KV cache and buffers)."""

from __future__ import annotations

from typing import Literal

import msgspec
import torch

DType = Literal["float32", "bfloat16", "float16"]
Decode = Literal["auto", "eager", "fused"]


class EngineConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    max_batch_size: int = 8
    """Sequences decoded concurrently; one KV-cache slot each. Further requests wait in a queue
    and join as running ones finish (continuous batching)."""
    max_seq_len: int = 2048
    """Longest prompt + response, in tokens. A response is cut with finish_reason "length" when
    it reaches this; longer prompts are rejected at `add_request`. Must not exceed the model's
    `max_position_embeddings`."""
    device: str = "cpu"
    """Torch device for the model, the KV cache and all per-slot buffers ("cpu", "cuda:0")."""
    dtype: DType = "float32"
    """Model and KV-cache dtype. Sampling and logprobs are computed in float32 whatever this is;
    use float32 on CPU when engine and trainer logprobs must agree to ~1e-6."""
    decode: Decode = "auto"
    """How decode steps run. "fused": Triton kernels (attention over each sequence's actual
    length, fused norms/rotary/KV writes, fused projections; dense models without attention
    bias; see `producers/engine/cuda/`). "eager": the model's own forward (any model, any device).
    "auto": fused on CUDA where the model allows it, eager otherwise. Fused on CPU runs only
    under TRITON_INTERPRET=1 (Triton's interpreter, for tests)."""
    cuda_graphs: bool = True
    """With fused decode on CUDA, capture each decode step as a CUDA graph (one per batch-size
    bucket, on first use) and replay it. False launches the same kernels one by one."""

    def __post_init__(self) -> None:
        if self.max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be positive, got {self.max_batch_size}")
        if self.max_seq_len < 2:
            raise ValueError(
                f"max_seq_len must be at least 2 (one prompt and one response token), "
                f"got {self.max_seq_len}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)
