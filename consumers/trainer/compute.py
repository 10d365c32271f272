"""Where and how the learner computes: device, precision, activation checkpointing, compile,
FSDP2. The default (CPU, fp32, eager) is the bit-exact path that replay relies on; the GPU
settings trade bit-exactness across machines for speed.

bf16 here means mixed precision: parameters and AdamW state stay fp32 (the master weights),
matmuls and attention run in bf16 (autocast on one GPU; FSDP2's `MixedPrecisionPolicy` on
several, which casts the gathered parameters once per forward instead of per op), gradients are
reduced and applied in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import msgspec
import torch
from torch import Tensor

from streamrl.models import CausalLM


class ComputeConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    device: str = "cpu"
    """Torch device of the learner ("cpu", "cuda", "cuda:1"). With FSDP it is each rank's own."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """"bf16": bf16 compute with fp32 master weights and optimizer state (CUDA only)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer in backward instead of keeping its activations."""
    compile: bool = False
    """torch.compile each decoder layer and the vocabulary-sized logprob kernels (CUDA)."""
    compile_mode: str | None = None
    """torch.compile mode: None (default), "max-autotune-no-cudagraphs" (autotunes the
    generated kernels and matmul choices; compiles for minutes), "reduce-overhead"."""
    compile_scope: Literal["layer", "model"] = "layer"
    """"layer": compile each decoder layer (one small graph, reused 28 times); "model": the
    whole decoder stack as one graph (fuses across layer boundaries; longer compile)."""
    compile_dynamic: bool | None = None
    """torch.compile's `dynamic`: None lets it mark dims dynamic after a shape change (the
    proximal forward and the minibatches differ in rows); False compiles one static graph per
    shape."""
    micro_batch_rows: int | None = None
    """Split each minibatch into micro-batches of at most this many rows and accumulate their
    gradients before the one optimizer step: more tokens per optimizer step at the activation
    memory of a micro-batch. Exact for aggregation = "token_mean" (each micro-batch's loss is
    scaled by its share of the minibatch's trained tokens); other aggregations are refused."""
    attention_backend: Literal["auto", "cudnn"] = "auto"
    """SDPA kernel choice: "auto" is PyTorch's order (flash first on an H100); "cudnn" tries
    cuDNN's fused attention first (Hopper-tuned), then flash, then the rest."""
    logprob_chunk_tokens: int = 4096
    """Tokens per chunk of the LM head + log-softmax on CUDA (at vocab 151936 in bf16, 4096
    tokens are 1.2 GB of logits, the largest transient of a step)."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state over the default process group with
    FSDP2 (`fully_shard` per decoder layer, then the root); needs torch.distributed set up."""

    def __post_init__(self) -> None:
        device = torch.device(self.device)
        if device.type == "cpu" and (self.precision != "fp32" or self.compile or self.fsdp):
            raise ValueError("precision='bf16', compile and fsdp need a CUDA device; "
                             f"got device={self.device!r} (set device = \"cuda\")")
        if self.attention_backend != "auto" and device.type == "cpu":
            raise ValueError(f"attention_backend={self.attention_backend!r} needs a CUDA device")
        if self.micro_batch_rows is not None and self.micro_batch_rows <= 0:
            raise ValueError(f"micro_batch_rows must be positive or None, "
                             f"got {self.micro_batch_rows}")
        if self.logprob_chunk_tokens <= 0:
            raise ValueError(f"logprob_chunk_tokens must be positive, "
                             f"got {self.logprob_chunk_tokens}")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def on_gpu(self) -> bool:
        return self.torch_device.type == "cuda"


def place(model: CausalLM, config: ComputeConfig) -> CausalLM:
    """Move `model` (fp32) to the device and apply checkpointing, compile and FSDP2."""
    model = model.to(device=config.torch_device, dtype=torch.float32)
    model.model.checkpoint_layers = config.activation_checkpointing
    if config.fsdp:
        _shard(model, config)
    if config.compile:
        options = {"mode": config.compile_mode, "dynamic": config.compile_dynamic}
        if config.compile_scope == "model":
            model.model.compile(**options)
        else:
            for layer in model.model.layers:
                layer.compile(**options)
    return model


def _shard(model: CausalLM, config: ComputeConfig) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not torch.distributed.is_initialized():
        raise ValueError("fsdp = true needs torch.distributed initialized (torchrun, or "
                         "init_process_group before building the learner)")
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    # The root unit owns the embedding, final norm and (tied) LM head.
    fully_shard(model, mp_policy=policy)


@contextlib.contextmanager
def autocast(config: ComputeConfig) -> Iterator[None]:
    """bf16 autocast on one GPU (FSDP already computes in its param dtype), and the SDPA
    kernel order of `attention_backend` (read when the forward is traced or run)."""
    enabled = config.precision == "bf16" and not config.fsdp
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(config.torch_device.type, dtype=torch.bfloat16,
                                           enabled=enabled))
        if config.attention_backend == "cudnn":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                     SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
            stack.enter_context(sdpa_kernel(order, set_priority=True))
        yield


def optimizer(model: CausalLM, config: ComputeConfig, *, lr: float,
              weight_decay: float) -> torch.optim.Optimizer:
    # fused AdamW is one kernel launch set per step on CUDA; the CPU path keeps the default
    # (foreach/for-loop) implementation, whose results replay bit-exactly.
    extra = {"fused": True} if config.on_gpu else {}
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, **extra)


def full_tensor(t: Tensor) -> Tensor:
    """A whole parameter even when FSDP holds only this rank's shard (a DTensor)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
