"""DeepSeek-V3's multi-head latent attention in the engine on a GPU: `decode="auto"` decodes
eagerly over the latent cache (the fused kernels refuse MLA), and its logprobs are what a
teacher-forced forward on the same device gives. Needs CUDA; skips without it. No transformers
needed (the GPU machine has none): the tiny model is streamrl's own, randomly initialized.

    python3 -m pytest -q -p no:cacheprovider tests/models/test_mla_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import CausalLM, ModelConfig
from streamrl.models.logprobs import token_logprobs
from streamrl.producers.engine import EngineConfig, TorchEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cuda"

# tests/models/test_mla.py's tiny DeepSeek-V3, as its config.json spells it
CONFIG = dict(
    model_type="deepseek_v3", vocab_size=300, hidden_size=64, intermediate_size=96,
    moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
    q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
    n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2, n_shared_experts=1,
    first_k_dense_replace=1, routed_scaling_factor=2.5, max_position_embeddings=256,
    rope_interleave=True, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10_000.0, "factor": 4.0,
        "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 0.8})


def tiny_model() -> CausalLM:
    torch.manual_seed(5)
    model = CausalLM(ModelConfig.from_hf_dict(CONFIG))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.08)  # transformers' initializer_range in test_mla.py
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    return model


def scored(model: CausalLM, prompt: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Teacher-forced logprobs of `response` on the model's own device and dtype."""
    device = model.lm_head.weight.device
    tokens = torch.from_numpy(np.concatenate([prompt, response])).long().to(device)
    P = len(prompt)
    with torch.inference_mode():
        hidden = model(tokens[None], torch.arange(len(tokens), device=device)[None],
                       return_hidden=True).hidden[0, P - 1 : -1]
        logp, _ = token_logprobs(hidden, model.lm_head.weight, tokens[P:], temperature=1.0)
    return logp.float().cpu().numpy()


@pytest.mark.parametrize(("dtype", "atol", "mean_atol"),
                         [("float32", 1e-4, 1e-5), ("bfloat16", 0.5, 0.03)])
def test_engine_on_cuda_decodes_mla_eagerly_like_the_trainer(
        dtype: str, atol: float, mean_atol: float) -> None:
    """fp32 to 1e-4 (CUDA's SDPA kernels differ between prefill and decode); bf16 to rounding
    (the same test on CPU: 0.36 at most, 0.014 on average, where fp32 gives 1e-6)."""
    config = EngineConfig(max_batch_size=4, max_seq_len=64, kv_block_size=16, device=DEVICE,
                          dtype=dtype, decode="auto")
    eng = TorchEngine(tiny_model(), config)
    assert eng._fused is None  # MLA: eager decode over the latent cache
    assert eng.cache.k.shape[-2:] == (1, 32 + 8) and eng.cache.v.numel() == 0
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    requests = [GenerationRequest(request_id=f"c{i}", params=params,
                                  prompt_tokens=torch.randint(0, 300, (5 + 7 * i,),
                                                              generator=g).tolist())
                for i in range(4)]
    gaps = np.concatenate([np.abs(scored(eng.model, r.prompt_tokens, r.response_tokens)
                                  - r.logprobs) for r in eng.generate(requests)])
    assert gaps.max() <= atol and gaps.mean() <= mean_atol
