"""Small real objects for the trainer tests: hand-written samples and a tiny random model."""

from __future__ import annotations

import msgspec
import numpy as np
import torch

from streamrl.models import CausalLM, ModelConfig
from streamrl.schemas import Sample
from streamrl.schemas.testing import make_sample


def sample(prompt: list[int], response: list[int], *, logprobs: list[float] | None = None,
           mask: list[bool] | None = None, versions: list[int] | None = None,
           reward: float = 0.0, group_id: str = "g0", sample_id: str | None = None,
           routed: np.ndarray | None = None) -> Sample:
    """A schema-valid sample with exactly the given tokens and per-token values."""
    n = len(response)
    base = make_sample(np.random.default_rng(len(prompt) * 100 + n), group_id=group_id,
                       num_prompt_tokens=len(prompt), num_response_tokens=n)
    return msgspec.structs.replace(
        base,
        sample_id=sample_id or f"{group_id}-{prompt}-{response}",
        prompt_tokens=np.array(prompt, np.int32), response_tokens=np.array(response, np.int32),
        logprobs=np.array(logprobs if logprobs is not None else [-1.0] * n, np.float32),
        loss_mask=np.array(mask if mask is not None else [True] * n, np.bool_),
        response_versions=np.array(versions if versions is not None else [3] * n, np.uint32),
        reward=reward, routed_experts=routed)


def tiny_model(*, moe: bool = False, seed: int = 0) -> CausalLM:
    extra = dict(model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2,
                 moe_intermediate_size=16) if moe else dict(model_type="qwen3")
    config = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, max_position_embeddings=128, **extra)
    torch.manual_seed(seed)
    return CausalLM(config).eval()
