"""Tiny random-init checkpoints of real architectures, written by transformers itself.

`build` saves a transformers model (`Qwen3ForCausalLM` / `Qwen3MoeForCausalLM`, fp32, CPU)
with `save_pretrained` and hands back the directory plus the live reference model. Weights use
a large init scale and randomized norm gains, so attention patterns, routing and logits are far
from the near-uniform regime where a wrong implementation could still match.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import torch

TINY = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    initializer_range=0.08,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
)


class Tiny(NamedTuple):
    path: Path
    ref: torch.nn.Module  # the transformers model that wrote `path`


def build(path: Path, moe: bool, seed: int = 0, **overrides) -> Tiny:
    # transformers is the reference, not a runtime dependency: skip (inside the fixture) without it.
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if moe:
        config = transformers.Qwen3MoeConfig(**{**TINY, "moe_intermediate_size": 32, **overrides})
        ref = transformers.Qwen3MoeForCausalLM(config)
    else:
        ref = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{**TINY, **overrides}))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
    ref.eval()
    ref.save_pretrained(path)
    return Tiny(path, ref)


# One tiny config per family beyond Qwen3 (`build_family`), each switching on what makes the
# family differ: llama3 rope scaling plus q/k/v/o and MLP biases (Llama), a sliding window
# shorter than the test sequences (Mistral), q/k/v bias with tied embeddings (Qwen2).
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        head_dim=None, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64})),
    "llama_plain": ("LlamaConfig", "LlamaForCausalLM", dict(head_dim=None)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=16)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(head_dim=None, tie_word_embeddings=True)),
}


def build_family(path: Path, family: str, seed: int = 0, **overrides) -> Tiny:
    """Like `build`, for a `FAMILIES` entry; biases (zero at init) are randomized too."""
    transformers = pytest.importorskip("transformers")
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    fields = {**TINY, **extra, **overrides}
    if fields["head_dim"] is None:
        del fields["head_dim"]
    ref = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**fields))
    randomize(ref)
    ref.eval()
    ref.save_pretrained(path)
    return Tiny(path, ref)


def randomize(ref: torch.nn.Module) -> None:
    """Norm gains, biases and MoE routers' correction biases (a buffer in transformers) far
    from their init, so a missed norm, bias or routing term shows in the logits."""
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
        for name, b in ref.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))


def batch(B: int, T: int, vocab: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens with positions 0..T-1 in every row: ([B, T], [B, T])."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (B, T), generator=g)
    return tokens, torch.arange(T).expand(B, T)


# Max abs logit difference we accept against transformers in fp32 (measured: 0 on these configs;
# the bound leaves room for a different BLAS/SDPA kernel choice on other machines).
ATOL = 1e-5
