"""`Fp8Linear`: a linear layer whose weight is block-wise FP8 (streamrl/weights/fp8.py), for the
rollout engine of an FP8 run (`[weights] dtype = "float8_e4m3fn"`).

    replaced = quantize_model(model)        # every projection from the model's own weights
    load_fp8_state(model, tensors, copy_hf_weights)   # an FP8 version (the engine's load)

Forward: activations are quantized per token and 128-wide block of the input dimension
(1x128, scale = amax / 448), the weight per 128x128 block, and y = (x_q * s_x) @ (W_q * s_W)^T
in fp32 accumulation, then cast to x's dtype (+ bias).

- CUDA: one `torch.nn.functional.scaled_mm` (ScalingType BlockWise1x128 x BlockWise128x128, a
  cuBLASLt FP8 GEMM on Hopper; needs CUDA >= 12.9). Rows are padded to a multiple of 16 (the
  scale layout's alignment); the activation quantizer is `torch.compile`d (one fused kernel
  instead of ~10 eager launches per linear), eager if compiling fails. If the GEMM is refused
  (older cuBLAS, a shape it does not take), the layer says why once (`Fp8Linear.fallback`)
  and runs the reference path instead.
- Reference (CPU, and CUDA's fallback): the same quantization of x and W, dequantized, one
  fp32 matmul. It is what tests compare against and what the CPU engine runs; it is slower
  than a BF16 linear (it dequantizes the weight on every call).

Only dense `nn.Linear` projections are replaced; stacked MoE experts (`moe.Experts`) keep their
BF16 parameters and load FP8 versions dequantized (`load_fp8_state`), so an MoE run still moves
half the expert bytes but computes them in BF16 (no grouped FP8 GEMM here yet).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrl.weights.fp8 import (
    BLOCK,
    FP8_MAX,
    SCALE_SUFFIX,
    dequantize_blocks,
    is_quantized,
    quantize_blocks,
    split_state,
)

_ROW_ALIGN = 16


def quantize_activation(x: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """(q float8_e4m3fn [M, K], scale float32 [M, ceil(K/block)]) of `x` [M, K], one scale per
    token and `block` input features: x ~= q * scale."""
    M, K = x.shape
    kb = -(-K // block)
    xf = x.float()
    if K % block:
        xf = F.pad(xf, (0, kb * block - K))
    blocks = xf.view(M, kb, block)
    amax = blocks.abs().amax(dim=-1)  # [M, kb]
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).view(M, kb * block)[:, :K]
    return q.to(torch.float8_e4m3fn), scale


def reference_fp8_linear(x: Tensor, q: Tensor, scale_inv: Tensor, bias: Tensor | None
                         ) -> Tensor:
    """The FP8 linear's numerics without an FP8 GEMM: [M, K] -> [M, N] in x's dtype."""
    xq, xs = quantize_activation(x)
    x_deq = xq.float() * xs.repeat_interleave(BLOCK, 1)[:, : x.shape[1]]
    y = x_deq @ dequantize_blocks(q, scale_inv).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


class Fp8Linear(nn.Module):
    """y = x W^T + b with W in FP8 (buffers `weight` float8_e4m3fn [out, in] and
    `weight_scale_inv` float32 [ceil(out/128), ceil(in/128)], the names of the FP8 version's
    tensors); `bias` stays a parameter in the model's dtype."""

    def __init__(self, in_features: int, out_features: int, *, bias: nn.Parameter | None,
                 device: torch.device) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features,
                                                   dtype=torch.float8_e4m3fn, device=device))
        nb, kb = -(-out_features // BLOCK), -(-in_features // BLOCK)
        # The scales sit in rows padded to a multiple of 4 (cuBLASLt's layout for 128x128
        # scaling), so `weight_scale_inv.t()` is the GEMM's operand as it is: no copy per
        # call, and in-place loads (and CUDA graphs that captured it) see new scales.
        padded = torch.ones(nb, kb + (-kb) % 4, dtype=torch.float32, device=device)
        self.register_buffer("weight_scale_inv", padded[:, :kb])
        self.bias = bias
        self.fallback: str | None = None
        """Why the CUDA FP8 GEMM was refused (the layer then runs the reference path)."""

    def set_weight(self, q: Tensor, scale_inv: Tensor) -> None:
        """Copy an FP8 weight and its block scales in, in place (shapes checked by the
        caller)."""
        self.weight.copy_(q)
        self.weight_scale_inv.copy_(scale_inv)

    @property
    def path(self) -> str:
        """"scaled_mm" (CUDA FP8 GEMM) or "reference" (dequantize, then matmul)."""
        return ("scaled_mm" if self.weight.is_cuda and self.fallback is None
                and hasattr(F, "scaled_mm") else "reference")

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., in] -> [..., out]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.path == "scaled_mm":
            try:
                y = self._scaled_mm(x2)
            except (RuntimeError, ValueError, NotImplementedError) as error:  # refused by
                # cuBLASLt (or torch's checks): say so once, stay correct
                self.fallback = str(error).splitlines()[0]
                warnings.warn(f"Fp8Linear: the CUDA FP8 GEMM was refused ({self.fallback}); "
                              "running the dequantizing reference path", stacklevel=2)
                y = reference_fp8_linear(x2, self.weight, self.weight_scale_inv, self.bias)
        else:
            y = reference_fp8_linear(x2, self.weight, self.weight_scale_inv, self.bias)
        return y.view(*lead, self.out_features)

    def _scaled_mm(self, x2: Tensor) -> Tensor:
        M = x2.shape[0]
        xq, scale_a = _gemm_operand(x2)
        out_dtype = x2.dtype if x2.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        y = F.scaled_mm(xq, self.weight.t(), scale_a, F.ScalingType.BlockWise1x128,
                        self.weight_scale_inv.t(), F.ScalingType.BlockWise128x128,
                        output_dtype=out_dtype)[:M]
        if self.bias is not None:
            y = y + self.bias.to(out_dtype)
        return y.to(x2.dtype)


def gemm_operand(x: Tensor) -> tuple[Tensor, Tensor]:
    """`quantize_activation` laid out for `scaled_mm`: rows padded to a multiple of 16, the
    scales [M, kb] column-major (stride (1, M)), as cuBLASLt's 1x128 scaling wants them."""
    pad = (-x.shape[0]) % _ROW_ALIGN
    xq, xs = quantize_activation(F.pad(x, (0, 0, 0, pad)) if pad else x)
    return xq, xs.t().contiguous().t()


@functools.cache
def _compiled_operand() -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    return torch.compile(gemm_operand, dynamic=True)


def _gemm_operand(x: Tensor) -> tuple[Tensor, Tensor]:
    """`gemm_operand` compiled (one fused kernel instead of ~10 eager ones per linear, which
    dominate a decode step's launches); eager if compiling fails (said once)."""
    global _COMPILE_FAILED
    if _COMPILE_FAILED is None:
        try:
            return _compiled_operand()(x)
        except Exception as error:  # any compiler failure: stay correct, eagerly
            _COMPILE_FAILED = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            warnings.warn(f"Fp8Linear: compiling the activation quantizer failed "
                          f"({_COMPILE_FAILED}); quantizing eagerly", stacklevel=3)
    return gemm_operand(x)


_COMPILE_FAILED: str | None = None  # why torch.compile of the quantizer failed, if it did


def fuse_fp8(*layers: Fp8Linear) -> Fp8Linear | None:
    """One `Fp8Linear` computing `layers` (same input) side by side, as `fuse_linears` does for
    bf16 weights (q|k|v, gate|up): its weight and scales are one buffer each, and each layer's
    buffers become views into them, so loading a version into the layers updates the fused
    one in place. None when an output size is not a multiple of 128 (a block of scales would
    straddle two layers)."""
    if any(m.out_features % BLOCK or m.in_features != layers[0].in_features for m in layers):
        return None
    first = layers[0]
    fused = Fp8Linear(first.in_features, sum(m.out_features for m in layers), bias=None,
                      device=first.weight.device)
    row = srow = 0
    for m in layers:
        n, nb = m.out_features, m.out_features // BLOCK
        fused.weight[row : row + n].copy_(m.weight)
        fused.weight_scale_inv[srow : srow + nb].copy_(m.weight_scale_inv)
        m.weight = fused.weight[row : row + n]  # re-registers the buffer as the view
        m.weight_scale_inv = fused.weight_scale_inv[srow : srow + nb]
        row, srow = row + n, srow + nb
    return fused


def _linears(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """(HF weight name, parent, attribute, linear) of every projection `is_quantized` picks."""
    found = []
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            name = f"{parent_name}.{attr}" if parent_name else attr
            if isinstance(child, nn.Linear) and is_quantized(f"{name}.weight", child.weight):
                found.append((f"{name}.weight", parent, attr, child))
    return found


def quantize_model(model: nn.Module) -> list[str]:
    """Replace every projection of `model` by an `Fp8Linear` holding its current weight
    quantized (the same `quantize_blocks` the trainer publishes with); returns their weight
    names. Idempotent: layers already FP8 are left alone. Parameters move, so call it before
    anything captures their addresses (the engine drops its fused decoder)."""
    names = []
    with torch.no_grad():
        for name, parent, attr, linear in _linears(model):
            fp8 = Fp8Linear(linear.in_features, linear.out_features, bias=linear.bias,
                            device=linear.weight.device)
            fp8.set_weight(*quantize_blocks(linear.weight))
            setattr(parent, attr, fp8)
            names.append(name)
    return names


def fp8_layers(model: nn.Module) -> dict[str, Fp8Linear]:
    """HF weight name -> the `Fp8Linear` that holds it."""
    return {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, Fp8Linear)}


def load_fp8_state(model: nn.Module, tensors: Mapping[str, Tensor],
                   copy_rest: Callable[[nn.Module, dict[str, Tensor]], object]) -> None:
    """Load an FP8 version into `model`: its quantized weights into the `Fp8Linear` layers
    (converting the projections first if they are not FP8 yet), every other tensor through
    `copy_rest(model, tensors)` (the engine's `copy_hf_weights`, which checks names and shapes
    before it writes), quantized ones without an FP8 layer (MoE experts) dequantized to the
    model's dtype. The quantized weights are checked before `copy_rest` runs, so a bad version
    raises ValueError with the model untouched."""
    quantized, rest = split_state(tensors)
    if not fp8_layers(model):
        quantize_model(model)
    layers = fp8_layers(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    for name, layer in layers.items():
        if name not in quantized:
            raise ValueError(f"FP8 weights: the model's FP8 layer `{name}` has no quantized "
                             f"weight in this version (and no `{name}{SCALE_SUFFIX}`)")
        q = quantized[name][0]
        if list(q.shape) != [layer.out_features, layer.in_features]:
            raise ValueError(f"FP8 weights: `{name}` has shape {list(q.shape)}, the model "
                             f"expects {[layer.out_features, layer.in_features]}")
    ours = {name: quantized.pop(name) for name in layers}
    copy_rest(model, rest | {n: dequantize_blocks(q, s, dtype) for n, (q, s) in quantized.items()})
    with torch.no_grad():
        for name, layer in layers.items():
            layer.set_weight(*ours[name])
