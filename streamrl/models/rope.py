"""Rotary-embedding frequencies: plain RoPE and Llama 3's rescaled frequencies.

`inverse_frequencies` is the one place the per-pair frequencies are computed; the eager
`RotaryEmbedding` and the engine's fused decode both call it, so they rotate by the same angles
to the bit. `parse_rope` reads the rope settings of an HF `config.json` in either spelling
(transformers 5 `rope_parameters`, or a top-level `rope_theta` plus a legacy `rope_scaling`).

Llama 3 (`rope_type = "llama3"`, Llama 3.1+): with wavelength 2π/f of each default frequency f,
wavelengths shorter than `original_max_position_embeddings / high_freq_factor` keep f, longer
than `original_max_position_embeddings / low_freq_factor` use f / factor, and those in between
blend the two linearly in `original / wavelength`; the attention scale stays 1.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import torch
from torch import Tensor

SUPPORTED_ROPE_TYPES = ("default", "llama3")


class Llama3Rope(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
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


def inverse_frequencies(head_dim: int, theta: float, scaling: Llama3Rope | None,
                        device: torch.device | str | None = None) -> Tensor:
    """[head_dim / 2] fp32 rotation frequency of each (i, i + D/2) pair."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    inv_freq = 1.0 / (theta**exponent)
    if scaling is None:
        return inv_freq
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


def parse_rope(raw: dict[str, Any]) -> tuple[float, Llama3Rope | None]:
    """(rope_theta, llama3 scaling or None) from a parsed `config.json`; `ValueError` naming
    the field for anything else."""
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
    fields = {k: params.get(k) for k in Llama3Rope.__struct_fields__}
    if fields["original_max_position_embeddings"] is None:
        fields["original_max_position_embeddings"] = raw.get("max_position_embeddings")
    try:
        return float(theta), msgspec.convert(fields, Llama3Rope)
    except msgspec.ValidationError as e:
        raise ValueError(f"config.json: `{name}` (llama3): {e}") from None
    except ValueError as e:
        raise ValueError(f"config.json: {e}") from None


def rope_to_hf(theta: float, scaling: Llama3Rope | None) -> dict[str, Any]:
    """The transformers-5 `rope_parameters` object for these settings."""
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    return {"rope_type": "llama3", "rope_theta": theta, **msgspec.structs.asdict(scaling)}
