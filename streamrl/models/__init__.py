"""streamrl's own decoder models, shared by producers and trainer: Llama 3.x, Mistral,
Qwen2/Qwen2.5, Qwen3, Qwen3-MoE, GLM-4.5 (`glm4_moe`) and DeepSeek-V3 / Kimi K2
(`deepseek_v3`), one decoder with per-family switches (`config.FAMILIES`).

    model = load_checkpoint("path/to/hf_checkpoint")          # CausalLM, fp32 on CPU
    out = model(tokens, positions)                            # out.logits: [B, T, vocab]
    out = model(tokens, positions, return_hidden=True)        # then token_logprobs(...)
    cache = KVCache.for_model(model.config, num_slots=B, max_seq_len=S)
    out = model(tokens, positions, kv_cache=cache)            # prefill / decode

`out.routed_experts` ([B, T, num_moe_layers, top_k] int32) records MoE routing; pass it back
as `forced_routing=` to replay it in the trainer.
"""

from streamrl.models.checkpoint import load_checkpoint, save_checkpoint
from streamrl.models.config import ModelConfig
from streamrl.models.kv_cache import CacheStep, KVCache
from streamrl.models.logprobs import fused_token_logprobs, token_logprobs
from streamrl.models.model import CausalLM, ModelOutput, Qwen3Model

__all__ = [
    "CacheStep",
    "CausalLM",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "Qwen3Model",
    "fused_token_logprobs",
    "load_checkpoint",
    "save_checkpoint",
    "token_logprobs",
]
