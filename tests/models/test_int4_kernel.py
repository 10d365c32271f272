"""The W4A16 Triton kernel against the torch path (dequantize, then matmul): compiled on CUDA,
under Triton's CPU interpreter without a GPU, so CI checks the same kernel code."""

from __future__ import annotations

import os

import pytest
import torch

# Must precede the kernel's import (Triton decides at build); see tests/engine/test_cuda_kernels.py.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from streamrl.models.int4_kernel import w4a16_matmul
from streamrl.models.quant import dequantize_packed, pack_int4, quantize_int4, w4a16_linear

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(("m", "dtype"), [(3, torch.float32), (70, torch.float32),
                                          (5, torch.bfloat16)])
def test_w4a16_kernel_matches_dequantize_then_matmul(m: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(m)
    n, k, group = 96, 128, 32  # N not a multiple of the 64-wide tile: masked edges
    q, scales = quantize_int4(torch.randn(n, k, generator=g), group)
    qweight = pack_int4(q).to(DEVICE)
    scales = scales.to(DEVICE)
    x = torch.randn(m, k, generator=g).to(DEVICE, dtype)
    got = w4a16_matmul(x, qweight, scales, group)
    ref = x.double() @ dequantize_packed(qweight, scales, group, dtype).double().T
    rel = float((got.double() - ref).norm() / ref.norm())
    assert got.dtype == dtype and rel < (1e-5 if dtype == torch.float32 else 2e-2)
    with pytest.raises(ValueError, match="do not fit group_size"):
        w4a16_matmul(x, qweight, scales, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA dispatch needs a GPU")
def test_linear_dispatches_bf16_on_cuda_to_the_kernel() -> None:
    q, scales = quantize_int4(torch.randn(256, 512), 128)
    qweight, scales = pack_int4(q).cuda(), scales.cuda()
    x = torch.randn(4, 7, 512, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)
    got = w4a16_linear(x, qweight, scales, 128, bias)
    ref = torch.nn.functional.linear(x, dequantize_packed(qweight, scales, 128, x.dtype), bias)
    assert got.shape == (4, 7, 256)
    assert float((got.float() - ref.float()).norm() / ref.float().norm()) < 1e-2
