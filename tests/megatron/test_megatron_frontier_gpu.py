"""megatron-core GPTModel for GLM-4.5 (`glm4_moe`) and DeepSeek-V3 / Kimi K2 (`deepseek_v3`:
MLA, with and without YaRN; sigmoid router with correction bias and groups, shared experts,
dense first layer) on a GPU, from checkpoints written by the installed transformers: its
parameters are the conversion's, and its fp32 logprobs match the torch backend's and
transformers' (when transformers is installed there), with free routing and with the torch
backend's routing replayed through megatron's RouterReplay. Skips without CUDA or megatron-core.

    python -m pytest -q -p no:cacheprovider tests/megatron/test_megatron_frontier_gpu.py -s
"""

from __future__ import annotations

import pytest
import torch

from streamrl.consumers.trainer.megatron import megatron_shapes
from streamrl.consumers.trainer.megatron import model as mg
from streamrl.models import CausalLM, ModelConfig, load_checkpoint, token_logprobs
from streamrl.models.checkpoint import to_hf_names

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
if torch.cuda.is_available():
    pytest.importorskip("megatron.core")

MOE = dict(vocab_size=4096, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
           num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=16,
           n_shared_experts=1, routed_scaling_factor=2.5, max_position_embeddings=256)
DEEPSEEK = dict(MOE, num_attention_heads=8, num_key_value_heads=8, q_lora_rank=64,
                kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                num_experts_per_tok=4, n_group=4, topk_group=2)
CASES = {
    "deepseek_v3": ("deepseek_v3", DEEPSEEK),
    # YaRN past a short original context, unequal mscales (cos/sin and softmax rescaled)
    "deepseek_v3_yarn": ("deepseek_v3", dict(DEEPSEEK, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "beta_fast": 32.0,
        "beta_slow": 1.0, "original_max_position_embeddings": 32, "mscale": 0.8,
        "mscale_all_dim": 1.0})),
    "glm4_moe": ("glm4_moe", dict(MOE, num_attention_heads=8, num_key_value_heads=2,
                                  head_dim=32, attention_bias=True, use_qk_norm=True,
                                  num_experts_per_tok=4, n_group=1, topk_group=1)),
}


def perturb(named_parameters, named_buffers) -> None:
    with torch.no_grad():
        for name, t in named_parameters:
            if name.endswith("norm.weight"):
                t.uniform_(0.5, 1.5)  # away from init, so a wrongly mapped one shows
            else:
                t.mul_(5.0)  # logprobs far from uniform; a wrong expert moves them
        for name, t in named_buffers:
            if name.endswith("e_score_correction_bias"):
                t.normal_(0, 0.05)  # changes choices without drowning the router


def source_model(path, model_type: str, fields: dict) -> tuple[CausalLM, bool]:
    """The torch backend's model of a random checkpoint written by transformers, when it is
    installed (then also the reference), else made by streamrl from the same config.json."""
    try:
        import transformers
    except ImportError:
        torch.manual_seed(0)
        model = CausalLM(ModelConfig.from_hf_dict({"model_type": model_type, **fields}))
        perturb(model.named_parameters(), model.named_buffers())
        return model, False
    config_class, model_class = {
        "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM),
        "glm4_moe": (transformers.Glm4MoeConfig, transformers.Glm4MoeForCausalLM)}[model_type]
    torch.manual_seed(0)
    model = model_class(config_class(**fields))
    perturb(model.named_parameters(), model.named_buffers())
    model.save_pretrained(path)
    return load_checkpoint(path), True


@pytest.mark.parametrize("name", sorted(CASES))
def test_megatron_matches_the_torch_backend_and_transformers(name: str, tmp_path) -> None:
    model_type, fields = CASES[name]
    model, written_by_transformers = source_model(tmp_path, model_type, fields)
    model = model.cuda().eval()
    config = model.config
    mg.initialize()
    gpt = mg.build_gpt(config)
    state = {n: tuple(t.shape) for n, t in mg.state_tensors(gpt).items()}
    assert state == megatron_shapes(config)
    hf = to_hf_names(model.state_dict(), config)
    mg.load_hf(gpt, hf, config)
    assert all(torch.equal(t, hf[n]) for n, t in mg.to_hf(gpt, config).items())
    gpt.eval()

    g = torch.Generator(device="cuda").manual_seed(3)
    seq = torch.randint(0, config.vocab_size, (2, 129), device="cuda", generator=g)
    tokens, targets = seq[:, :-1], seq[:, 1:]
    positions = torch.arange(tokens.shape[1], device="cuda").expand_as(tokens)
    with torch.no_grad():
        out = model(tokens, positions, return_hidden=True)
        ref = token_logprobs(out.hidden, model.lm_head.weight, targets)[0]
        got = mg.logprobs(gpt, tokens, targets)
        replayed = mg.logprobs(gpt, tokens, targets, forced_routing=out.routed_experts)
    gaps = {"torch": float((got - ref).abs().max()),
            "replayed": float((replayed - ref).abs().max())}
    if written_by_transformers:
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
        with torch.no_grad():
            logits = hf_model.cuda().eval()(tokens).logits.float()
        want = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
        gaps["transformers"] = float((got - want).abs().max())
    print(f"{name}: megatron fp32 logprob max gap " + ", ".join(
        f"vs {k} {v:.3g}" for k, v in gaps.items()))
    assert max(gaps.values()) < 1e-3, gaps
