"""Rotary-embedding frequencies: plain RoPE, Llama 3's rescaled frequencies and YaRN.

`inverse_frequencies` is the one place the per-pair frequencies are computed; the eager
`RotaryEmbedding` and the engine's fused decode both call it, so they rotate by the same angles
to the bit. `parse_rope` reads the rope settings of an HF `config.json` in either spelling
(transformers 5 `rope_parameters`, or a top-level `rope_theta` plus a legacy `rope_scaling`),
and `rope_to_hf` writes them back; `RopeScaling` is the union of the scalings implemented.

Llama 3 (`rope_type = "llama3"`, Llama 3.1+): with wavelength 2π/f of each default frequency f,
wavelengths shorter than `original_max_position_embeddings / high_freq_factor` keep f, longer
than `original_max_position_embeddings / low_freq_factor` use f / factor, and those in between
blend the two linearly in `original / wavelength`; the attention scale stays 1.

YaRN (`rope_type = "yarn"`, DeepSeek-V3, Kimi K2, long-context Qwen), as transformers computes
it: pair i of a d-wide rotary keeps its frequency f_i ("extrapolation") below dimension index
`low`, takes f_i / factor ("interpolation") above `high`, and blends linearly in between, where
low/high are the pair indices at which a wave turns `beta_fast` resp. `beta_slow` times over
`original_max_position_embeddings` (floored/ceiled unless `truncate` is false). Two scales:

- `rope_attention_factor`: cos and sin are multiplied by it (so q·k of the rotary part by its
  square): `attention_factor` if given, else m(factor, mscale) / m(factor, mscale_all_dim) when
  both are set, else m(factor, 1), with m(s, c) = 0.1·c·ln(s) + 1 for s > 1 (else 1). DeepSeek-V3
  and Kimi K2 set mscale = mscale_all_dim, so it is 1.
- `softmax_mscale`: multi-head latent attention (and only it: transformers' `yarn_apply_mscale`
  in modeling_deepseek_v3) multiplies its softmax scale 1/sqrt(qk_head_dim) by
  m(factor, mscale_all_dim)², over the non-rotary dims too.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import torch
from torch import Tensor

SUPPORTED_ROPE_TYPES = ("default", "llama3", "yarn")


class Llama3Rope(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True,
                 tag_field="rope_type", tag="llama3"):
    """Llama 3.1's frequency rescaling (`rope_parameters` with `rope_type = "llama3"`)."""

    factor: float
    """Long wavelengths are stretched by this much (8 for Llama 3.1)."""
    low_freq_factor: float
    """Wavelengths above original_max_position_embeddings / low_freq_factor are fully stretched."""
    high_freq_factor: float
    """Wavelengths below original_max_position_embeddings / high_freq_factor are kept."""
    original_max_position_embeddings: int
    """Context length of pre-training before the extension (8192 for Llama 3.1)."""

    def __post_init__(self) -> None:
        if min(self.factor, self.low_freq_factor, self.original_max_position_embeddings) <= 0:
            raise ValueError("`rope_parameters`: llama3 `factor`, `low_freq_factor` and "
                             "`original_max_position_embeddings` must be positive")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"`rope_parameters.high_freq_factor` ({self.high_freq_factor}) must be greater "
                f"than `low_freq_factor` ({self.low_freq_factor})")


class YarnRope(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True,
               tag_field="rope_type", tag="yarn"):
    """YaRN (`rope_parameters` with `rope_type = "yarn"`, or legacy `rope_scaling.type`), as
    DeepSeek-V3 (factor 40) and Kimi K2 (factor 32) use it. Defaults are transformers'."""

    factor: float
    """Context extension factor: interpolated frequencies are f / factor."""
    original_max_position_embeddings: int
    """Context length of pre-training before the extension (4096 for DeepSeek-V3)."""
    beta_fast: float = 32.0
    """Pairs turning more than this many times over the original context keep their frequency."""
    beta_slow: float = 1.0
    """Pairs turning fewer than this many times are fully interpolated."""
    mscale: float | None = None
    """With `mscale_all_dim`: cos/sin factor m(factor, mscale) / m(factor, mscale_all_dim)."""
    mscale_all_dim: float | None = None
    """MLA's softmax scale is multiplied by m(factor, mscale_all_dim)² (module docstring)."""
    attention_factor: float | None = None
    """The cos/sin factor itself, overriding the one derived from `factor` and the mscales."""
    truncate: bool = True
    """Round the blend's dimension range outward to whole pairs (transformers' default)."""

    def __post_init__(self) -> None:
        if self.factor <= 0 or self.original_max_position_embeddings <= 0:
            raise ValueError("`rope_parameters`: yarn `factor` and "
                             "`original_max_position_embeddings` must be positive")
        if self.attention_factor is not None and self.attention_factor <= 0:
            raise ValueError(f"`rope_parameters.attention_factor` must be positive, got "
                             f"{self.attention_factor}")


RopeScaling = Llama3Rope | YarnRope
"""Every rope scaling the model code implements (msgspec-tagged by `rope_type`)."""


def _yarn_m(scale: float, mscale: float = 1.0) -> float:
    """YaRN's m(s, c) = 0.1·c·ln(s) + 1 (1 for s <= 1), transformers' `yarn_get_mscale`."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def rope_attention_factor(scaling: RopeScaling | None) -> float:
    """What cos and sin are multiplied by: 1 except for YaRN (module docstring)."""
    if not isinstance(scaling, YarnRope):
        return 1.0
    if scaling.attention_factor is not None:
        return float(scaling.attention_factor)
    if scaling.mscale and scaling.mscale_all_dim:
        return float(_yarn_m(scaling.factor, scaling.mscale)
                     / _yarn_m(scaling.factor, scaling.mscale_all_dim))
    return _yarn_m(scaling.factor)


def softmax_mscale(scaling: RopeScaling | None) -> float:
    """The factor MLA multiplies its softmax scale by: m(factor, mscale_all_dim)² for YaRN
    with `mscale_all_dim`, else 1. Apply as `scale * m * m` (`mla_softmax_scale`)."""
    if isinstance(scaling, YarnRope) and scaling.mscale_all_dim:
        return _yarn_m(scaling.factor, scaling.mscale_all_dim)
    return 1.0


def mla_softmax_scale(qk_head_dim: int, scaling: RopeScaling | None) -> float:
    """Multi-head latent attention's softmax scale, rounded exactly as transformers does."""
    scale = qk_head_dim ** (-0.5)
    m = softmax_mscale(scaling)
    return scale * m * m if m != 1.0 else scale


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None,
                        device: torch.device | str | None = None) -> Tensor:
    """[head_dim / 2] fp32 rotation frequency of each (i, i + D/2) pair."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    inv_freq = 1.0 / (theta**exponent)
    if scaling is None:
        return inv_freq
    if isinstance(scaling, YarnRope):
        return _yarn_frequencies(head_dim, theta, scaling, theta**exponent)
    s = scaling
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    stretched = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * stretched / s.factor + smooth * stretched
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, stretched)


def _yarn_frequencies(dim: int, theta: float, s: YarnRope, pos_freqs: Tensor) -> Tensor:
    # pos_freqs: [dim / 2] theta^(2i/dim) -> [dim / 2]; same operations, same order as
    # transformers' `_compute_yarn_parameters`, so the result is equal to the bit.
    def correction_dim(rotations: float) -> float:
        # the pair index whose wave turns `rotations` times over the original context
        return (dim * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi))
                / (2 * math.log(theta)))

    low, high = correction_dim(s.beta_fast or 32), correction_dim(s.beta_slow or 1)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # keep the ramp's slope finite
    ramp = (torch.arange(dim // 2, dtype=torch.float32, device=pos_freqs.device) - low) / (
        high - low)
    extrapolate = 1 - ramp.clamp(0, 1)  # 1: keep the frequency, 0: divide it by factor
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (s.factor * pos_freqs)
    return interpolated * (1 - extrapolate) + extrapolated * extrapolate


_STRUCTS: dict[str, type[Llama3Rope] | type[YarnRope]] = {"llama3": Llama3Rope, "yarn": YarnRope}


def parse_rope(raw: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling or None) from a parsed `config.json`; `ValueError` naming the
    field for anything else."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    name = "rope_parameters" if raw.get("rope_parameters") else "rope_scaling"
    if not isinstance(params, dict):
        raise ValueError(f"config.json: `{name}` must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"config.json: `{name}.rope_type` is {rope_type!r}; only "
            f"{', '.join(SUPPORTED_ROPE_TYPES)} rotary embeddings are implemented"
        )
    theta = params.get("rope_theta", raw.get("rope_theta", 10_000.0))
    if not isinstance(theta, int | float) or isinstance(theta, bool) or theta <= 1:
        raise ValueError(f"config.json: `rope_theta` must be a number > 1, got {theta!r}")
    if rope_type == "default":
        return float(theta), None
    struct = _STRUCTS[rope_type]
    fields = {k: params[k] for k in struct.__struct_fields__ if params.get(k) is not None}
    fields.setdefault("original_max_position_embeddings", raw.get("max_position_embeddings"))
    if rope_type == "yarn" and "factor" not in fields:
        # transformers: the ratio of the extended to the original context
        original, longest = fields["original_max_position_embeddings"], raw.get(
            "max_position_embeddings")
        if isinstance(original, int) and isinstance(longest, int) and original > 0:
            fields["factor"] = longest / original
    try:
        return float(theta), msgspec.convert(fields, struct)
    except msgspec.ValidationError as e:
        raise ValueError(f"config.json: `{name}` ({rope_type}): {e}") from None
    except ValueError as e:
        raise ValueError(f"config.json: {e}") from None


def rope_to_hf(theta: float, scaling: RopeScaling | None) -> dict[str, Any]:
    """The transformers-5 `rope_parameters` object for these settings."""
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    fields = msgspec.to_builtins(scaling)  # the tag first: {"rope_type": ..., ...}
    return {"rope_theta": theta, **{k: v for k, v in fields.items() if v is not None}}
