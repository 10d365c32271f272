"""Where and how the learner computes: device, precision, activation checkpointing, compile,
FSDP2. The default (CPU, fp32, eager) is the bit-exact path that replay relies on; the GPU
settings trade bit-exactness across machines for speed.

bf16 here means mixed precision: parameters and AdamW state stay fp32 (the master weights),
matmuls and attention run in bf16 (autocast on one GPU; FSDP2's `MixedPrecisionPolicy` on
several, which casts the gathered parameters once per forward instead of per op), gradients are
reduced and applied in fp32. "fp8" is bf16 with the projections' GEMMs in FP8 (fp8.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from streamrl.consumers.trainer.fp8 import to_float8_training
from streamrl.models import CausalLM
from streamrl.recipe.trainer import ComputeConfig


def place(model: CausalLM, config: ComputeConfig) -> CausalLM:
    """Move `model` (fp32) to the device and apply checkpointing, compile and FSDP2."""
    model = model.to(device=config.torch_device, dtype=torch.float32)
    model.model.checkpoint_above = checkpoint_above(config)
    if config.precision == "fp8":  # torchao float8 linears for the projections (fp8.py)
        to_float8_training(model)
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


def checkpoint_above(config: ComputeConfig) -> int | None:
    """The model's `checkpoint_above` for `activation_checkpointing`: rows longer than this
    many tokens recompute their layers in backward (None: never)."""
    if config.activation_checkpointing == "auto":
        return config.checkpoint_above_tokens
    return 0 if config.activation_checkpointing else None


def _shard(model: CausalLM, config: ComputeConfig) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not torch.distributed.is_initialized():
        raise ValueError("fsdp = true needs torch.distributed initialized (torchrun, or "
                         "init_process_group before building the learner)")
    dtype = torch.bfloat16 if config.precision in ("bf16", "fp8") else torch.float32
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    # The root unit owns the embedding, final norm and (tied) LM head.
    fully_shard(model, mp_policy=policy)


@contextlib.contextmanager
def autocast(config: ComputeConfig) -> Iterator[None]:
    """bf16 autocast on one GPU (FSDP already computes in its param dtype), and the SDPA
    kernel order of `attention_backend` (read when the forward is traced or run)."""
    enabled = config.precision in ("bf16", "fp8") and not config.fsdp
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
    # Only what trains gets optimizer state (a LoRA run's adapters, not its frozen base).
    trained = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay, **extra)


def full_tensor(t: Tensor) -> Tensor:
    """A whole parameter even when FSDP holds only this rank's shard (a DTensor)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
