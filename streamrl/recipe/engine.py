"""`EngineConfig`: the shape of the embedded torch engine's static state (KV cache and buffers)."""

from __future__ import annotations

from typing import Literal

import msgspec
import torch

DType = Literal["float32", "bfloat16", "float16"]
Decode = Literal["auto", "eager", "fused"]

ENGINES = {
    "sglang": "streamrl.producers.sglang:engine_from_options",
    "vllm": "streamrl.producers.vllm:engine_from_options",
}
"""`rollout.engine_factory` by short name (docs/sglang.md, docs/vllm.md); an import path works
as it is."""


class EngineConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    max_batch_size: int = 8
    """Sequences decoded concurrently (slots). Further requests wait in a queue and join as
    running ones finish and KV blocks free up (continuous batching)."""
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

    kv_block_size: int = 16
    """Tokens per KV-cache block (paged cache: each sequence holds the blocks its length needs,
    through a block table)."""
    kv_blocks: int | None = None
    """KV-cache blocks in the pool (block 0 is scratch). None: `kv_memory_fraction` if set,
    else enough for `max_batch_size` sequences at `max_seq_len` (never preempts; the memory of
    a static cache). Fewer admit sequences by the blocks they need and preempt (recompute)
    the newest when a long tail runs the pool dry."""
    kv_memory_fraction: float | None = None
    """CUDA only: give the KV pool this fraction of the device memory free when the engine
    starts (after its weights are loaded), like vLLM's gpu_memory_utilization but of free,
    not total, memory. Leave room for a colocated trainer."""
    max_step_tokens: int = 4096
    """Token budget of one step: one per decoding sequence, the rest for prefill. A longer
    prompt is prefilled in chunks over several steps while running sequences keep decoding."""
    prefix_sharing: bool = True
    """Samples of one prompt share its KV blocks: the prompt is prefilled once per group (the
    block holding its last token is copied per sample). False: no k/v reuse at all (prefix
    caching included)."""
    prefix_caching: bool = True
    """With `prefix_sharing`: keep the full KV blocks of finished sequences, keyed by a hash of
    their tokens, so a request whose prompt starts with them (the next turn of a conversation:
    earlier prompt + response + new context) prefills only the rest. Cached blocks nobody holds
    are reclaimed before anyone is preempted; loading weights clears the cache."""

    def __post_init__(self) -> None:
        if self.kv_block_size <= 0 or self.max_step_tokens <= 0:
            raise ValueError(
                f"kv_block_size and max_step_tokens must be positive, got "
                f"{self.kv_block_size} and {self.max_step_tokens}"
            )
        if self.kv_blocks is not None and self.kv_memory_fraction is not None:
            raise ValueError("set kv_blocks or kv_memory_fraction, not both")
        if self.kv_memory_fraction is not None and (
            not 0 < self.kv_memory_fraction <= 1 or not self.device.startswith("cuda")
        ):
            raise ValueError(
                f"kv_memory_fraction must lie in (0, 1] and needs a CUDA device (got "
                f"{self.kv_memory_fraction} on {self.device!r}); on CPU set kv_blocks"
            )
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
