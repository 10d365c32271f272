"""megatron-core GPTModel for the dense families beyond Qwen3 (Qwen2's q/k/v bias, Llama 3.1's
rope scaling without q/k norm, Mistral without a window): its parameters are the conversion's,
and its fp32 logprobs match the torch backend's. Skips without CUDA or megatron-core."""

from __future__ import annotations

import msgspec
import pytest
import torch

from streamrl.consumers.trainer.megatron import megatron_shapes
from streamrl.consumers.trainer.megatron import model as mg
from streamrl.models import CausalLM, ModelConfig, token_logprobs
from streamrl.models.checkpoint import to_hf_names

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
if torch.cuda.is_available():
    pytest.importorskip("megatron.core")

BASE = dict(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
            num_attention_heads=8, num_key_value_heads=2, head_dim=64, rope_theta=500_000.0)
FAMILIES = {
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True),
    # original context 8192 as megatron hard-codes; the sequence is short, but every position's
    # angle uses the rescaled frequencies
    "llama": dict(model_type="llama", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}),
    "mistral": dict(model_type="mistral"),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_megatron_matches_the_torch_backend(name: str) -> None:
    config = msgspec.convert({**BASE, **FAMILIES[name]}, ModelConfig)
    torch.manual_seed(0)
    model = CausalLM(config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.uniform_(0.5, 1.5)  # away from init, so a wrongly mapped one shows
    model = model.cuda().eval()
    mg.initialize()
    gpt = mg.build_gpt(config)
    assert {n: tuple(p.shape) for n, p in gpt.named_parameters()} == megatron_shapes(config)
    hf = to_hf_names(model.state_dict(), config)
    mg.load_hf(gpt, hf, config)
    assert all(torch.equal(t, hf[n]) for n, t in mg.to_hf(gpt, config).items())
    gpt.eval()
    g = torch.Generator(device="cuda").manual_seed(3)
    seq = torch.randint(0, config.vocab_size, (2, 129), device="cuda", generator=g)
    tokens, targets = seq[:, :-1], seq[:, 1:]
    positions = torch.arange(tokens.shape[1], device="cuda").expand_as(tokens)
    with torch.no_grad():
        hidden = model(tokens, positions, return_hidden=True).hidden
        ref = token_logprobs(hidden, model.lm_head.weight, targets)[0]
        got = mg.logprobs(gpt, tokens, targets)
    gap = float((got - ref).abs().max())
    print(f"{name}: megatron vs torch fp32 logprob max gap {gap:.3g}")
    assert gap < 1e-3
